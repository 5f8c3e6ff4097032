"""Security posture: the settings that decide how hard it is to patch the running kernel.

Nothing here proves tampering. A weak setting (lockdown off, unsigned modules allowed, KASLR
not in effect, kernel pointers shown to users) opens a door that rootkits and exploits use,
so each one becomes a `weakness` finding that says what was read and why it matters.

Sources: securityfs (lockdown, LSMs), procfs (taint, cmdline, sysctls, cpuinfo, kallsyms),
sysfs (CPU vulnerabilities, module parameters) and efivarfs (Secure Boot). Every parser is a
pure function over text so it can be tested on captured files.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from patchguard.engine.findings import Disposition, Evidence, Finding, Gap, Severity
from patchguard.kernel.errors import KernelAccessError, oserror_reason
from patchguard.kernel.mounts import ensure_mounted
from patchguard.surfaces.base import SurfaceState

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

SURFACE = "posture"

LOCKDOWN = "/sys/kernel/security/lockdown"
LSM = "/sys/kernel/security/lsm"
TAINTED = "/proc/sys/kernel/tainted"
CMDLINE = "/proc/cmdline"
CPUINFO = "/proc/cpuinfo"
VULNERABILITIES = "/sys/devices/system/cpu/vulnerabilities"
KALLSYMS = "/proc/kallsyms"
ARCH = "/proc/sys/kernel/arch"
EFI = "/sys/firmware/efi"
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e39890e1e5fc"
SIG_ENFORCE = "/sys/module/module/parameters/sig_enforce"
PROC_MODULES = "/proc/modules"

# x86_64: __START_KERNEL_map + LOAD_PHYSICAL_ADDR (16 MiB), where _stext sits without KASLR.
X86_64_DEFAULT_STEXT = 0xFFFFFFFF81000000
LOCKED_DOWN = ("integrity", "confidentiality")


# --- records -----------------------------------------------------------------------------------


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


# --- parsers: pure functions over text ---------------------------------------------------------


def parse_lockdown(text: str) -> str:
    """The selected mode of `none [integrity] confidentiality`."""
    selected = [w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")]
    if len(selected) != 1 or not selected[0]:
        raise ValueError(f"no single [selected] mode in {text.strip()!r}")
    return selected[0]


def lockdown_modes(text: str) -> tuple[str, ...]:
    return tuple(w.strip("[]") for w in text.split())


def parse_lsm(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.strip().split(",") if name)


# Documentation/admin-guide/tainted-kernels.rst, bit -> (letter, meaning).
TAINT_BITS: dict[int, tuple[str, str]] = {
    0: ("P", "proprietary module was loaded"),
    1: ("F", "module was force loaded"),
    2: ("S", "kernel running on an out of specification system"),
    3: ("R", "module was force unloaded"),
    4: ("M", "processor reported a Machine Check Exception (MCE)"),
    5: ("B", "bad page referenced or some unexpected page flags"),
    6: ("U", "taint requested by userspace application"),
    7: ("D", "kernel died recently, i.e. there was an OOPS or BUG"),
    8: ("A", "an ACPI table was overridden by user"),
    9: ("W", "kernel issued warning"),
    10: ("C", "staging driver was loaded"),
    11: ("I", "workaround for bug in platform firmware applied"),
    12: ("O", "externally-built (out-of-tree) module was loaded"),
    13: ("E", "unsigned module was loaded"),
    14: ("L", "soft lockup occurred"),
    15: ("K", "kernel has been live patched"),
    16: ("X", "auxiliary taint, defined for and used by distros"),
    17: ("T", "kernel was built with the struct randomization plugin"),
    18: ("N", "an in-kernel test has been run"),
    19: ("J", "userspace used a mutating debug operation in fwctl"),
}


def parse_taint(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"negative taint {value}")
    return value


def decode_taint(value: int) -> list[TaintFlag]:
    flags = []
    for bit in range(value.bit_length()):
        if value >> bit & 1:
            letter, meaning = TAINT_BITS.get(bit, ("?", "unknown taint bit (newer kernel?)"))
            flags.append(TaintFlag(bit, letter, meaning))
    return flags


def _next_arg(args: str) -> tuple[str, str | None, str]:
    """One parameter off the front of `args`, as lib/cmdline.c next_arg() takes it.

    Double quotes may wrap the whole parameter (`"a=b c"`) or its value (`a="b c"`); they
    group spaces and are removed. Returns (param, value, rest).
    """
    quoted = args.startswith('"')
    if quoted:
        args = args[1:]
    in_quote = quoted
    equals = -1
    i = 0
    while i < len(args):
        ch = args[i]
        if ch.isspace() and not in_quote:
            break
        if equals < 0 and ch == "=":
            equals = i
        if ch == '"':
            in_quote = not in_quote
        i += 1
    token, rest = args[:i], args[i:].lstrip()
    closing = token.endswith('"')
    if equals < 0:
        return (token[:-1] if quoted and closing else token), None, rest
    param, value = token[:equals], token[equals + 1 :]
    value_quoted = value.startswith('"')
    if value_quoted:
        value = value[1:]
    if (quoted or value_quoted) and closing and value.endswith('"'):
        value = value[:-1]
    return param, value, rest


def parse_cmdline(text: str) -> Cmdline:
    """Kernel parameters of /proc/cmdline; `--` ends them and the rest goes to init."""
    params: list[BootParam] = []
    rest = text.strip()
    while rest:
        param, value, rest = _next_arg(rest)
        if param == "--" and value is None:
            return Cmdline(tuple(params), tuple(rest.split()))
        params.append(BootParam(param.replace("-", "_"), value))
    return Cmdline(tuple(params))


def parse_cpu_flags(text: str) -> frozenset[str]:
    """The flags every CPU has: a protection missing on one CPU is missing."""
    common: frozenset[str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags = frozenset(value.split())
            common = flags if common is None else common & flags
    if common is None:
        raise ValueError("no 'flags' line (not an x86 /proc/cpuinfo?)")
    return common


def parse_secure_boot(data: bytes) -> bool:
    """An efivarfs file is 4 bytes of attributes, then the variable: here one byte, 1 = on."""
    if len(data) < 5:
        raise ValueError(f"{len(data)} bytes, expected 4 bytes of attributes and 1 of value")
    return data[4] == 1


def find_stext(lines: Iterable[str]) -> int | None:
    """The address of `_stext` from kallsyms lines ("ffffffff81000000 T _stext")."""
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "_stext":
            return int(fields[0], 16)
    return None


def parse_setting(text: str) -> str:
    """A one-value sysctl or parameter file; several words or none is not what we expect."""
    words = text.split()
    if len(words) != 1:
        raise ValueError(f"expected one value, read {text.strip()!r}")
    return words[0]


# --- what to read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SysctlRule:
    name: str  # dotted, as sysctl(8) names it
    expected: str
    judge: Callable[[int], Severity | None]  # severity of the weakness, None when fine
    technique: str
    why: str
    absent: str = "not present on this kernel"

    @property
    def path(self) -> str:
        return "/proc/sys/" + self.name.replace(".", "/")


def _below(limit: int, severity: Severity) -> Callable[[int], Severity | None]:
    return lambda v: severity if v < limit else None


def _equals(bad: int, severity: Severity) -> Callable[[int], Severity | None]:
    return lambda v: severity if v == bad else None


def _perf_paranoid(v: int) -> Severity | None:
    # -1 also opens raw tracepoints and kernel profiling to every user.
    return Severity.MEDIUM if v < 0 else Severity.LOW if v < 2 else None


def _aslr(v: int) -> Severity | None:
    return Severity.MEDIUM if v == 0 else Severity.LOW if v == 1 else None


def _never(v: int) -> Severity | None:
    return None


SYSCTLS: tuple[SysctlRule, ...] = (
    SysctlRule(
        "kernel.kptr_restrict",
        ">= 1",
        _below(1, Severity.MEDIUM),
        "kernel-pointers-exposed",
        "kernel addresses printed with %pK are shown to unprivileged users, which hands an "
        "exploit the KASLR offset it would otherwise have to leak",
    ),
    SysctlRule(
        "kernel.dmesg_restrict",
        ">= 1",
        _below(1, Severity.LOW),
        "kernel-log-readable",
        "any user can read the kernel log, which leaks addresses and state useful to exploits",
    ),
    SysctlRule(
        "kernel.unprivileged_bpf_disabled",
        ">= 1",
        _equals(0, Severity.MEDIUM),
        "unprivileged-bpf",
        "any user can load BPF programs, a large attack surface behind many privilege "
        "escalations into the kernel",
    ),
    SysctlRule(
        "net.core.bpf_jit_harden",
        ">= 1",
        _below(1, Severity.LOW),
        "bpf-jit-unhardened",
        "constants in JIT-compiled BPF are not blinded, so BPF can plant chosen bytes in "
        "executable kernel memory (JIT spraying)",
    ),
    # Judged with sig_enforce and lockdown in _module_loading(), not alone.
    SysctlRule(
        "kernel.modules_disabled",
        "1, or modules signed",
        _never,
        "modules-loadable",
        "kernel modules can be loaded",
        absent="not present on this kernel",
    ),
    # Judged with lockdown in _kexec(): lockdown refuses unsigned kexec images.
    SysctlRule(
        "kernel.kexec_load_disabled",
        "1, or lockdown",
        _never,
        "kexec-load-allowed",
        "root can boot another kernel with kexec_load",
        absent="not present: the kernel is built without kexec (CONFIG_KEXEC_CORE), so it "
        "cannot load another kernel",
    ),
    SysctlRule(
        "kernel.perf_event_paranoid",
        ">= 2",
        _perf_paranoid,
        "perf-events-open",
        "unprivileged users can profile the kernel with perf events, a source of address "
        "leaks and a large attack surface",
    ),
    SysctlRule(
        "kernel.ftrace_enabled",
        "0 where function tracing is not needed",
        _equals(1, Severity.INFO),
        "ftrace-enabled",
        "function tracing is on, so root can hook any traceable kernel function through "
        "ftrace (the tracing surface verifies those hooks)",
    ),
    SysctlRule(
        "kernel.randomize_va_space",
        "2",
        _aslr,
        "aslr-weak",
        "user space address layout randomization is off or partial, which makes exploits of "
        "privileged programs reliable",
    ),
    SysctlRule(
        "kernel.yama.ptrace_scope",
        ">= 1",
        _equals(0, Severity.LOW),
        "ptrace-unrestricted",
        "any process can ptrace the other processes of its user and take their secrets",
        absent="not present: the kernel is built without Yama (CONFIG_SECURITY_YAMA)",
    ),
    SysctlRule(
        "kernel.sysrq",
        "not 1",
        _equals(1, Severity.LOW),
        "sysrq-all",
        "every magic SysRq function is open to the console, including memory dumps and "
        "killing all processes",
        absent="not present: the kernel is built without magic SysRq (CONFIG_MAGIC_SYSRQ)",
    ),
    SysctlRule(
        "fs.protected_symlinks",
        "1",
        _equals(0, Severity.LOW),
        "symlinks-unprotected",
        "symlinks in world-writable sticky directories are followed, the classic /tmp race "
        "used for privilege escalation",
    ),
    SysctlRule(
        "fs.protected_hardlinks",
        "1",
        _equals(0, Severity.LOW),
        "hardlinks-unprotected",
        "users can hard-link files they do not own, which lets them pin and redirect "
        "privileged files",
    ),
    SysctlRule(
        "vm.mmap_min_addr",
        ">= 4096",
        _below(4096, Severity.MEDIUM),
        "null-page-mappable",
        "user space can map page zero, which turns kernel NULL pointer bugs into code execution",
    ),
)
SYSCTL_RULES = {rule.name: rule for rule in SYSCTLS}

# All are recorded; only a missing smep or smap is a finding (ibt and shadow stacks are too
# new to expect, pti is needed only on Meltdown-affected CPUs, which the vulnerabilities say).
CPU_PROTECTIONS: dict[str, str] = {
    "smep": "the kernel cannot execute user-space pages (stops ret2usr)",
    "smap": "the kernel cannot touch user-space data except through uaccess helpers",
    "umip": "user space cannot read descriptor-table addresses (SGDT/SIDT) that leak KASLR",
    "ibt": "indirect branches must land on ENDBR instructions (control-flow integrity)",
    "user_shstk": "user-space shadow stacks against return-oriented programming",
    "pti": "page table isolation: kernel memory unmapped while user space runs (Meltdown)",
}
WITHOUT_CPU_PROTECTION = {
    "smep": "the kernel will execute code placed in user-space pages (ret2usr)",
    "smap": "the kernel will read and write data an attacker placed in user space",
}


# --- collect -----------------------------------------------------------------------------------


T = TypeVar("T")


@dataclass
class _Reading:
    """What collect() has read so far, and what it could not."""

    kernel: Kernel
    records: list[object] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    def gap(self, what: str, reason: str) -> None:
        self.gaps.append(Gap(SURFACE, what, reason))

    def text(self, what: str, path: str) -> str | None:
        """The file's text, or None with a gap recorded."""
        try:
            return self.kernel.read_text(path)
        except KernelAccessError as exc:
            self.gap(what, str(exc))
            return None

    def parsed(self, what: str, path: str, parse: Callable[[str], T]) -> T | None:
        text = self.text(what, path)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.gap(what, f"{path}: unexpected content: {exc}")
            return None


def _is_enoent(exc: KernelAccessError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.ENOENT


def _collect_security(r: _Reading) -> None:
    reason = ensure_mounted("securityfs", r.kernel.root)
    if reason is not None:
        r.gap("lockdown mode", reason)
        r.gap("active LSMs", reason)
        return
    lsms = r.parsed("active LSMs", LSM, parse_lsm)
    if lsms is not None:
        r.records.append(ActiveLsms(lsms))
    try:
        text = r.kernel.read_text(LOCKDOWN)
    except KernelAccessError as exc:
        # No lockdown file and no lockdown in the LSM list: the LSM is simply not running.
        if _is_enoent(exc) and lsms is not None and "lockdown" not in lsms:
            r.records.append(Lockdown(None))
        else:
            r.gap("lockdown mode", str(exc))
        return
    try:
        r.records.append(Lockdown(parse_lockdown(text), lockdown_modes(text)))
    except ValueError as exc:
        r.gap("lockdown mode", f"{LOCKDOWN}: unexpected content: {exc}")


def _collect_taint(r: _Reading) -> None:
    value = r.parsed("taint", TAINTED, parse_taint)
    if value is not None:
        r.records.append(Taint(value, tuple(decode_taint(value))))


def _collect_setting(r: _Reading, name: str, path: str, absent: str) -> None:
    try:
        text = r.kernel.read_text(path)
    except KernelAccessError as exc:
        # A missing file under a /proc/sys (or /sys/module) that exists is a setting this
        # kernel does not have; a missing tree is a capture that left it out.
        top = "/".join(path.split("/")[:3])
        if _is_enoent(exc) and r.kernel.path(top).is_dir():
            r.records.append(Setting(name, path, None, absent))
        else:
            r.gap(f"setting {name}", str(exc))
        return
    try:
        value = parse_setting(text)
        if path.startswith("/proc/sys/"):
            int(value)
    except ValueError as exc:
        r.gap(f"setting {name}", f"{path}: unexpected content: {exc}")
        return
    r.records.append(Setting(name, path, value))


def _collect_settings(r: _Reading) -> None:
    modules_built = r.kernel.path(PROC_MODULES).exists()
    no_modules = (
        "not present: the kernel is built without loadable modules (CONFIG_MODULES), so no "
        "module can be loaded at all"
    )
    for rule in SYSCTLS:
        absent = rule.absent
        if rule.name == "kernel.modules_disabled" and not modules_built:
            absent = no_modules
        _collect_setting(r, rule.name, rule.path, absent)
    if modules_built:
        absent = "not present: module signature checking is not built (CONFIG_MODULE_SIG)"
    else:
        absent = no_modules
    _collect_setting(r, "module.sig_enforce", SIG_ENFORCE, absent)


def _collect_secure_boot(r: _Reading) -> None:
    if not r.kernel.path(EFI).is_dir():
        if r.kernel.path("/sys/firmware").is_dir():
            r.records.append(SecureBoot(False, None, f"not an EFI boot (no {EFI})"))
        else:
            r.gap("Secure Boot", "/sys/firmware not present (sysfs not mounted or not captured)")
        return
    efivars = r.kernel.path(EFI + "/efivars")
    try:
        data = r.kernel.path(SECURE_BOOT_VAR).read_bytes()
    except OSError as exc:
        if exc.errno == errno.ENOENT and efivars.is_dir() and any(efivars.iterdir()):
            r.records.append(SecureBoot(True, None, "firmware has no SecureBoot variable"))
        else:
            r.gap("Secure Boot", f"{SECURE_BOOT_VAR}: {oserror_reason(exc)}")
        return
    try:
        enabled = parse_secure_boot(data)
    except ValueError as exc:
        r.gap("Secure Boot", f"{SECURE_BOOT_VAR}: unexpected content: {exc}")
        return
    r.records.append(SecureBoot(True, enabled, "SecureBoot variable is " + str(int(enabled))))


def _collect_cpu(r: _Reading) -> None:
    flags = r.parsed("CPU protections", CPUINFO, parse_cpu_flags)
    if flags is not None:
        r.records.extend(CpuProtection(f, f in flags, why) for f, why in CPU_PROTECTIONS.items())
    try:
        names = sorted(p.name for p in r.kernel.path(VULNERABILITIES).iterdir())
    except OSError as exc:
        r.gap("CPU vulnerabilities", f"{VULNERABILITIES}: {oserror_reason(exc)}")
        return
    for name in names:
        text = r.text(f"CPU vulnerability {name}", f"{VULNERABILITIES}/{name}")
        if text is not None:
            r.records.append(CpuVulnerability(name, text.strip()))


def _collect_kaslr(r: _Reading, cmdline: Cmdline | None) -> None:
    # Stream kallsyms up to _stext (the second line on 6.x) rather than read 5 MB of it.
    try:
        with r.kernel.path(KALLSYMS).open(errors="replace") as f:
            stext = find_stext(f)
    except OSError as exc:
        r.gap("KASLR", f"{KALLSYMS}: {oserror_reason(exc)}")
        return
    except ValueError as exc:
        r.gap("KASLR", f"{KALLSYMS}: unexpected content: {exc}")
        return
    arch_text = r.text("KASLR", ARCH)
    if arch_text is None:
        return
    arch = arch_text.strip()
    if cmdline is not None and cmdline.has("nokaslr"):
        r.records.append(Kaslr(stext, False, "nokaslr on the kernel command line"))
        return
    undetermined = None
    if stext is None:
        undetermined = f"no _stext in {KALLSYMS}"
    elif stext == 0:
        undetermined = f"{KALLSYMS} shows zero addresses (kptr_restrict, or no CAP_SYSLOG)"
    elif arch != "x86_64":
        undetermined = f"the default kernel address is known here only for x86_64, not {arch}"
    if undetermined is not None:
        r.records.append(Kaslr(None if stext == 0 else stext, None, undetermined))
        r.gap("KASLR", "could not be determined: " + undetermined)
        return
    assert stext is not None
    # With KASLR the kernel can still pick the lowest slot, the default, about once in 500
    # boots; a scan that sees it again on the next boot has its answer.
    at_default = stext == X86_64_DEFAULT_STEXT
    detail = "_stext at the default address" if at_default else "_stext moved from the default"
    r.records.append(Kaslr(stext, not at_default, detail))


class PostureSurface:
    name = SURFACE
    title = "Security posture"

    def collect(self, kernel: Kernel) -> SurfaceState:
        r = _Reading(kernel)
        _collect_security(r)
        _collect_taint(r)
        cmdline = r.parsed("kernel command line", CMDLINE, parse_cmdline)
        if cmdline is not None:
            r.records.append(cmdline)
        _collect_settings(r)
        _collect_secure_boot(r)
        _collect_cpu(r)
        _collect_kaslr(r, cmdline)
        weak = sum(1 for f in assess_records(r.records) if f.severity >= Severity.LOW)
        return SurfaceState(
            SURFACE, tuple(r.records), {"settings": len(r.records), "weak": weak}, tuple(r.gaps)
        )

    def assess(self, state: SurfaceState) -> list[Finding]:
        return assess_records(state.records)


# --- assess ------------------------------------------------------------------------------------


def _weakness(
    technique: str,
    severity: Severity,
    subject: str,
    summary: str,
    evidence: Evidence,
    attack_id: str | None = None,
) -> Finding:
    return Finding(
        surface=SURFACE,
        technique=technique,
        severity=severity,
        subject=subject,
        summary=summary,
        disposition=Disposition.WEAKNESS,
        attack_id=attack_id,
        evidence=evidence,
    )


def _all(records: Sequence[object], kind: type[T]) -> list[T]:
    return [r for r in records if isinstance(r, kind)]


def _one(records: Sequence[object], kind: type[T]) -> T | None:
    found = _all(records, kind)
    return found[0] if found else None


def _lockdown_on(records: Sequence[object]) -> bool:
    """Unknown lockdown counts as off: a setting is not excused by what was not read."""
    lockdown = _one(records, Lockdown)
    return lockdown is not None and lockdown.mode in LOCKED_DOWN


def _assess_lockdown(lockdown: Lockdown) -> list[Finding]:
    why = (
        "root can change the running kernel: write kernel memory through /dev/mem and MSRs, "
        "load unsigned modules, kexec an unsigned kernel and override ACPI tables"
    )
    if lockdown.mode is None:
        return [
            _weakness(
                "lockdown-missing",
                Severity.HIGH,
                "lockdown",
                f"The lockdown LSM is not active, so {why}.",
                {"path": LOCKDOWN, "value": None, "expected": "integrity or confidentiality"},
            )
        ]
    if lockdown.mode == "none":
        return [
            _weakness(
                "lockdown-off",
                Severity.HIGH,
                "lockdown",
                f"Kernel lockdown is off (none), so {why}.",
                {"path": LOCKDOWN, "value": "none", "expected": "integrity or confidentiality"},
            )
        ]
    return []


# letter -> (severity, technique, why it matters); letters not here get no finding.
TAINT_FINDINGS: dict[str, tuple[Severity, str, str]] = {
    "P": (Severity.MEDIUM, "proprietary-module", "code nobody can review runs in the kernel"),
    "F": (
        Severity.HIGH,
        "forced-module-load",
        "a module was loaded past the version checks, a way to force foreign code into the kernel",
    ),
    "R": (
        Severity.MEDIUM,
        "forced-module-unload",
        "a module was pulled out by force, which can leave dangling hooks in kernel memory",
    ),
    "O": (
        Severity.MEDIUM,
        "out-of-tree-module",
        "code built outside the kernel tree runs in "
        "the kernel; most rootkits are out-of-tree modules",
    ),
    "E": (
        Severity.HIGH,
        "unsigned-module",
        "a module without a valid signature was loaded, "
        "which is how rootkits enter a kernel that signs its modules",
    ),
    "K": (
        Severity.MEDIUM,
        "live-patched",
        "kernel functions were replaced at run time; the patch must be one you installed",
    ),
    "A": (
        Severity.MEDIUM,
        "acpi-table-override",
        "an ACPI table was replaced, and ACPI code runs with kernel privilege",
    ),
    "J": (
        Severity.MEDIUM,
        "fwctl-debug-write",
        "device firmware was changed through a mutating fwctl debug operation",
    ),
    "D": (
        Severity.LOW,
        "kernel-oops",
        "the kernel oopsed; failed exploits oops, and the kernel may be left inconsistent",
    ),
    "U": (Severity.LOW, "user-taint", "user space asked the kernel to mark itself tainted"),
    "C": (Severity.LOW, "staging-driver", "a staging driver, below mainline quality, was loaded"),
    "X": (Severity.LOW, "auxiliary-taint", "a distribution-defined taint was set"),
    "N": (
        Severity.LOW,
        "kernel-test",
        "an in-kernel test ran; test modules do not belong in production kernels",
    ),
    "W": (Severity.INFO, "kernel-warning", "the kernel issued a warning"),
}
MODULE_TAINTS = frozenset("PFOE")


def _assess_taint(taint: Taint) -> list[Finding]:
    findings = []
    for flag in taint.flags:
        if flag.letter not in TAINT_FINDINGS:
            continue
        severity, technique, why = TAINT_FINDINGS[flag.letter]
        findings.append(
            _weakness(
                "taint-" + technique,
                severity,
                f"taint {flag.letter}",
                f"The kernel is tainted {flag.letter} ({flag.meaning}): {why}.",
                {
                    "path": TAINTED,
                    "value": str(taint.value),
                    "bit": flag.bit,
                    "letter": flag.letter,
                    "expected": f"bit {flag.bit} clear",
                },
                "T1547.006" if flag.letter in MODULE_TAINTS else None,
            )
        )
    return findings


@dataclass(frozen=True)
class ParamRule:
    name: str
    weak: Callable[[str | None], Severity | None]
    expected: str
    why: str


_OFF = frozenset({"0", "n", "no", "off", "false"})


def _flag(severity: Severity) -> Callable[[str | None], Severity | None]:
    return lambda value: severity


def _when(values: Iterable[str], severity: Severity) -> Callable[[str | None], Severity | None]:
    bad = frozenset(values)
    return lambda value: severity if value is not None and value.lower() in bad else None


def _mitigations(value: str | None) -> Severity | None:
    # "auto,nosmt" and friends: the first word is the mode.
    return Severity.MEDIUM if value and value.split(",")[0].lower() == "off" else None


def _iommu(value: str | None) -> Severity | None:
    words = set((value or "").lower().split(","))
    return Severity.MEDIUM if "off" in words else Severity.LOW if "pt" in words else None


def _clearcpuid(value: str | None) -> Severity | None:
    cleared = set((value or "").lower().split(","))
    if cleared & {"smep", "smap"}:
        return Severity.HIGH
    return Severity.MEDIUM if cleared & set(CPU_PROTECTIONS) else None


def _lsm_override(value: str | None) -> Severity | None:
    return Severity.MEDIUM if "lockdown" not in parse_lsm(value or "") else Severity.LOW


BOOT_PARAMS: tuple[ParamRule, ...] = (
    ParamRule(
        "nokaslr",
        _flag(Severity.MEDIUM),
        "absent",
        "turns off KASLR: the kernel sits at its link-time address, so every kernel "
        "address is known to an attacker",
    ),
    ParamRule(
        "lockdown",
        _when(["none"], Severity.MEDIUM),
        "integrity or confidentiality",
        "asks for no kernel lockdown, which leaves root free to modify the kernel",
    ),
    ParamRule(
        "module.sig_enforce",
        _when(_OFF, Severity.MEDIUM),
        "absent or 1",
        "asks the kernel to load modules without a valid signature",
    ),
    ParamRule(
        "mitigations",
        _mitigations,
        "auto",
        "turns off every CPU vulnerability mitigation, so user space can read kernel "
        "memory through side channels",
    ),
    ParamRule(
        "nosmep",
        _flag(Severity.HIGH),
        "absent",
        "turns off SMEP, so the kernel will execute user-space code (ret2usr)",
    ),
    ParamRule(
        "nosmap",
        _flag(Severity.HIGH),
        "absent",
        "turns off SMAP, so the kernel will use data planted in user space",
    ),
    ParamRule(
        "noumip",
        _flag(Severity.LOW),
        "absent",
        "turns off UMIP, so user space can read descriptor-table addresses",
    ),
    ParamRule(
        "clearcpuid",
        _clearcpuid,
        "no protection flags",
        "hides CPU protection features from the kernel, which then does not use them",
    ),
    ParamRule(
        "nopti",
        _flag(Severity.MEDIUM),
        "absent",
        "turns off page table isolation: on Meltdown-affected CPUs user space can read "
        "kernel memory",
    ),
    ParamRule(
        "pti",
        _when(["off"], Severity.MEDIUM),
        "on or auto",
        "turns off page table isolation: on Meltdown-affected CPUs user space can read "
        "kernel memory",
    ),
    ParamRule(
        "ibt",
        _when(["off"], Severity.MEDIUM),
        "absent",
        "turns off Indirect Branch Tracking, the hardware check on indirect calls that "
        "breaks code-reuse attacks",
    ),
    ParamRule(
        "rodata",
        _when(["off"], Severity.HIGH),
        "absent or on",
        "leaves kernel text and read-only data writable, so a single write primitive can "
        "patch the kernel",
    ),
    ParamRule(
        "norandmaps",
        _flag(Severity.MEDIUM),
        "absent",
        "turns off address space randomization for every process",
    ),
    ParamRule(
        "randomize_kstack_offset",
        _when(_OFF, Severity.LOW),
        "absent or on",
        "turns off per-syscall kernel stack offset randomization",
    ),
    ParamRule(
        "iommu",
        _iommu,
        "absent or on",
        "lets devices DMA into any memory, and DMA can patch the kernel",
    ),
    ParamRule(
        "intel_iommu",
        _when(["off"], Severity.MEDIUM),
        "on",
        "lets devices DMA into any memory, and DMA can patch the kernel",
    ),
    ParamRule(
        "amd_iommu",
        _when(["off"], Severity.MEDIUM),
        "absent",
        "lets devices DMA into any memory, and DMA can patch the kernel",
    ),
    ParamRule(
        "lsm",
        _lsm_override,
        "the built-in list",
        "overrides the built-in LSM list at boot, so a boot loader change decides which "
        "security modules run",
    ),
    ParamRule(
        "security", _flag(Severity.LOW), "absent", "overrides the built-in major LSM at boot"
    ),
    ParamRule("selinux", _when(["0"], Severity.LOW), "absent", "turns SELinux off"),
    ParamRule(
        "enforcing",
        _when(["0"], Severity.MEDIUM),
        "absent or 1",
        "puts SELinux in permissive mode, where it logs but denies nothing",
    ),
    ParamRule("apparmor", _when(["0"], Severity.LOW), "absent", "turns AppArmor off"),
    ParamRule(
        "ima_appraise",
        _when(["off", "fix", "log"], Severity.LOW),
        "enforce",
        "stops IMA appraisal from enforcing, so files with bad measurements still run",
    ),
)


def _assess_cmdline(cmdline: Cmdline) -> list[Finding]:
    findings = []
    for rule in BOOT_PARAMS:
        if not cmdline.has(rule.name):
            continue
        value = cmdline.last(rule.name)
        severity = rule.weak(value)
        if severity is None:
            continue
        shown = rule.name if value is None else f"{rule.name}={value}"
        findings.append(
            _weakness(
                "weakening-boot-param",
                severity,
                f"boot parameter {shown}",
                f"The kernel was booted with {shown}, which {rule.why}.",
                {"path": CMDLINE, "param": rule.name, "value": value, "expected": rule.expected},
            )
        )
    return findings


def _assess_setting(setting: Setting) -> list[Finding]:
    rule = SYSCTL_RULES.get(setting.name)
    if rule is None or setting.value is None:
        return []
    try:
        severity = rule.judge(int(setting.value))
    except ValueError:
        return []
    if severity is None:
        return []
    return [
        _weakness(
            rule.technique,
            severity,
            f"sysctl {setting.name}",
            f"{setting.name} is {setting.value}: {rule.why}.",
            {"path": setting.path, "value": setting.value, "expected": rule.expected},
        )
    ]


def _setting(records: Sequence[object], name: str) -> Setting | None:
    return next((s for s in _all(records, Setting) if s.name == name), None)


def _module_loading(records: Sequence[object]) -> list[Finding]:
    """Loadable modules are normal; unsigned ones without lockdown are the rootkit's door."""
    disabled = _setting(records, "kernel.modules_disabled")
    if disabled is None or disabled.value != "0":
        return []  # modules off, not built, or not read (a gap says so)
    sig = _setting(records, "module.sig_enforce")
    if sig is not None and sig.value == "Y":
        return []
    # Lockdown refuses unsigned modules, but only where signature checking is built.
    if sig is not None and sig.value is not None and _lockdown_on(records):
        return []
    sig_value = None if sig is None else sig.value
    return [
        _weakness(
            "unsigned-modules-loadable",
            Severity.MEDIUM,
            "kernel modules",
            "Root can load kernel modules without a valid signature (modules_disabled=0, "
            "signatures not enforced), the simplest way to run code in the kernel and patch it.",
            {
                "path": disabled.path,
                "value": disabled.value,
                "sig_enforce": sig_value,
                "expected": "modules_disabled=1, or sig_enforce=Y, or lockdown",
            },
            "T1547.006",
        )
    ]


def _kexec(records: Sequence[object]) -> list[Finding]:
    setting = _setting(records, "kernel.kexec_load_disabled")
    if setting is None or setting.value != "0" or _lockdown_on(records):
        return []
    return [
        _weakness(
            "kexec-load-allowed",
            Severity.LOW,
            "sysctl kernel.kexec_load_disabled",
            "kexec_load_disabled is 0 and lockdown is off: root can boot into another, "
            "unsigned kernel without going through firmware or the boot loader.",
            {"path": setting.path, "value": "0", "expected": "1, or lockdown"},
        )
    ]


def _assess_secure_boot(sb: SecureBoot) -> list[Finding]:
    evidence: Evidence = {"path": SECURE_BOOT_VAR, "value": sb.detail, "expected": "1"}
    if not sb.efi:
        return [
            _weakness(
                "boot-unverified",
                Severity.INFO,
                "Secure Boot",
                "Not an EFI boot, so there is no Secure Boot state to read: nothing in firmware "
                "is known to check the kernel image before it runs.",
                {"path": EFI, "value": sb.detail, "expected": "an EFI boot with Secure Boot"},
            )
        ]
    if sb.enabled is None:
        return [
            _weakness(
                "secure-boot-unsupported",
                Severity.LOW,
                "Secure Boot",
                "The firmware has no SecureBoot variable, so it does not verify the kernel "
                "image it boots.",
                evidence,
            )
        ]
    if not sb.enabled:
        return [
            _weakness(
                "secure-boot-off",
                Severity.MEDIUM,
                "Secure Boot",
                "Secure Boot is off: the firmware boots any kernel image, so a modified kernel "
                "or boot loader on disk is not stopped.",
                evidence,
            )
        ]
    return []


def _assess_cpu(protection: CpuProtection) -> list[Finding]:
    without = WITHOUT_CPU_PROTECTION.get(protection.flag)
    if protection.present or without is None:
        return []
    return [
        _weakness(
            f"no-{protection.flag}",
            Severity.MEDIUM,
            f"cpu {protection.flag}",
            f"The CPUs do not report {protection.flag}, so it is not in force and {without}.",
            {"path": CPUINFO, "value": "absent", "flag": protection.flag, "expected": "present"},
        )
    ]


def _assess_vulnerability(vuln: CpuVulnerability) -> list[Finding]:
    if not vuln.status.startswith("Vulnerable"):
        return []
    # Meltdown reads kernel memory directly; the others leak through narrower channels.
    severity = Severity.MEDIUM if vuln.name == "meltdown" else Severity.LOW
    return [
        _weakness(
            "cpu-vulnerable",
            severity,
            f"cpu vulnerability {vuln.name}",
            f"The kernel reports the CPUs vulnerable to {vuln.name} ({vuln.status}), so user "
            "space may be able to read memory it should not through a side channel.",
            {
                "path": f"{VULNERABILITIES}/{vuln.name}",
                "value": vuln.status,
                "expected": "Not affected, or Mitigation: ...",
            },
        )
    ]


def _assess_kaslr(kaslr: Kaslr) -> list[Finding]:
    if kaslr.in_effect is not False:
        return []
    return [
        _weakness(
            "kaslr-off",
            Severity.MEDIUM,
            "KASLR",
            f"KASLR is not in effect ({kaslr.detail}): kernel addresses are those of the "
            "published vmlinux, so an exploit needs no address leak.",
            {
                "path": KALLSYMS,
                "value": None if kaslr.stext is None else f"{kaslr.stext:#x}",
                "expected": f"_stext != {kaslr.default:#x}",
            },
        )
    ]


def assess_records(records: Sequence[object]) -> list[Finding]:
    """Findings from posture records alone; cross-checks (modules, kexec) need several."""
    findings: list[Finding] = []
    for record in records:
        if isinstance(record, Lockdown):
            findings += _assess_lockdown(record)
        elif isinstance(record, Taint):
            findings += _assess_taint(record)
        elif isinstance(record, Cmdline):
            findings += _assess_cmdline(record)
        elif isinstance(record, Setting):
            findings += _assess_setting(record)
        elif isinstance(record, SecureBoot):
            findings += _assess_secure_boot(record)
        elif isinstance(record, CpuProtection):
            findings += _assess_cpu(record)
        elif isinstance(record, CpuVulnerability):
            findings += _assess_vulnerability(record)
        elif isinstance(record, Kaslr):
            findings += _assess_kaslr(record)
    return findings + _module_loading(records) + _kexec(records)
