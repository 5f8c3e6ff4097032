"""What to read and how to judge it: sysctls, CPU protections, taint letters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from patchguard.findings import Severity

LOCKED_DOWN = ("integrity", "confidentiality")


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
