"""What the posture surface records: one frozen dataclass per kind of fact."""

from __future__ import annotations

from dataclasses import dataclass

# x86_64: __START_KERNEL_map + LOAD_PHYSICAL_ADDR (16 MiB), where _stext sits without KASLR.
from patchguard.kernel.kallsyms import X86_64_DEFAULT_STEXT
from patchguard.surfaces.base import RecordSet


@dataclass(frozen=True)
class Lockdown:
    """The lockdown LSM's mode; mode None means the LSM is not active on this kernel."""

    mode: str | None
    available: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActiveLsms:
    names: tuple[str, ...]


@dataclass(frozen=True)
class TaintFlag:
    bit: int
    letter: str
    meaning: str


@dataclass(frozen=True)
class Taint:
    value: int
    flags: tuple[TaintFlag, ...]


@dataclass(frozen=True)
class BootParam:
    name: str  # dashes folded to underscores, as the kernel compares them (parameq)
    value: str | None  # None for a bare flag such as `nokaslr`


@dataclass(frozen=True)
class Cmdline:
    params: tuple[BootParam, ...]  # kernel parameters, in order
    init_args: tuple[str, ...] = ()  # everything after `--`: init's, not the kernel's

    def has(self, name: str) -> bool:
        return any(p.name == name for p in self.params)

    def last(self, name: str) -> str | None:
        """The value the kernel ends up with: the last occurrence wins for most parameters."""
        values = [p.value for p in self.params if p.name == name]
        return values[-1] if values else None


@dataclass(frozen=True)
class Setting:
    """A sysctl or module parameter; `absent` says why a kernel does not have it."""

    name: str  # "kernel.kptr_restrict", "module.sig_enforce"
    path: str
    value: str | None
    absent: str | None = None


@dataclass(frozen=True)
class SecureBoot:
    efi: bool
    enabled: bool | None  # None: not an EFI boot, or firmware has no SecureBoot variable
    detail: str


@dataclass(frozen=True)
class CpuProtection:
    flag: str  # /proc/cpuinfo flag name
    present: bool  # on every CPU
    meaning: str


@dataclass(frozen=True)
class CpuVulnerability:
    name: str  # file name under /sys/devices/system/cpu/vulnerabilities
    status: str  # its one line, as the kernel wrote it


@dataclass(frozen=True)
class Kaslr:
    stext: int | None  # None: not readable (zeroed by kptr_restrict, or missing)
    in_effect: bool | None  # None: could not be determined, detail says why
    detail: str
    default: int = X86_64_DEFAULT_STEXT


@dataclass(frozen=True)
class ModuleTaint:
    """One module's taint as one view shows it."""

    module: str
    value: int  # taint bits
    source: str  # "struct module", "/sys/module/<name>/taint", "/proc/modules"


@dataclass(frozen=True)
class MemoryTaintValue:
    """tainted_mask as kernel memory holds it."""

    value: int
    source: str


@dataclass(frozen=True)
class PostureRecords(RecordSet):
    """The posture surface's records by kind."""

    lsms: ActiveLsms | None = None
    lockdown: Lockdown | None = None
    taint: Taint | None = None
    memory_taint: MemoryTaintValue | None = None
    module_taints: tuple[ModuleTaint, ...] = ()
    settings: tuple[Setting, ...] = ()
    secure_boot: SecureBoot | None = None
    cpu_protections: tuple[CpuProtection, ...] = ()
    cpu_vulnerabilities: tuple[CpuVulnerability, ...] = ()
    kaslr: Kaslr | None = None
    cmdline: Cmdline | None = None
