"""The catalogue of techniques: every kind of finding patchguard reports, declared once with
its default severity, its MITRE ATT&CK id where one fits, and one line on what it means.

A finding names its technique by the catalogue's name (`Finding.__post_init__` refuses any
other), so `patchguard techniques` and docs/techniques.md (generated from this table, checked
by a unit test) list everything a report can contain. A finding may be graver or milder than
the default when its evidence says so (a kprobe on commit_creds is graver than one on
vfs_read); the default is what the technique usually means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from patchguard.findings import Severity

ROOTKIT = "T1014"  # Rootkit
KERNEL_MODULES = "T1547.006"  # Boot or Logon Autostart Execution: Kernel Modules and Extensions
IMPAIR_DEFENSES = "T1562.001"  # Impair Defenses: Disable or Modify Tools
STORED_DATA = "T1565.001"  # Data Manipulation: Stored Data Manipulation
# The dynamic trace event kinds tracefs defines (tracing surface, dynamic_events).
EVENT_KINDS = (
    "kprobe",
    "kretprobe",
    "uprobe",
    "uretprobe",
    "fprobe",
    "fexit",
    "tprobe",
    "eprobe",
    "synthetic",
    "other",
)


@dataclass(frozen=True)
class Technique:
    name: str  # kebab-case, as findings and JSON carry it
    severity: Severity  # the usual severity; evidence may raise or lower it
    attack_id: str | None  # MITRE ATT&CK technique, where one fits
    meaning: str  # one line: what was seen and why it matters


def _events() -> tuple[Technique, ...]:
    return tuple(
        Technique(
            f"dynamic-{kind}-event",
            Severity.INFO,
            None,
            f"A {kind} trace event is defined in tracefs: a probe someone set up by hand",
        )
        for kind in EVENT_KINDS
    )


_CATALOGUE: tuple[Technique, ...] = (
    # Kernel code, read through the memory reader and compared with the baseline (check).
    Technique(
        "jump-label",
        Severity.INFO,
        None,
        "A jump label site holds the NOP or the JMP its static key asks for (explained)",
    ),
    Technique(
        "static-call-site",
        Severity.INFO,
        None,
        "A static call site calls the start of a function, as static_call_update does (explained)",
    ),
    Technique(
        "static-call-trampoline",
        Severity.INFO,
        None,
        "A static call trampoline jumps to the start of a function (explained)",
    ),
    Technique(
        "kprobe",
        Severity.INFO,
        None,
        "A kprobe's INT3 or optimized JMP at the probed instruction (explained with its owner)",
    ),
    Technique(
        "ftrace-site",
        Severity.INFO,
        None,
        "A function's ftrace site calls a trampoline that a BPF link or ftrace ops owns "
        "(explained)",
    ),
    Technique(
        "ftrace-caller",
        Severity.INFO,
        None,
        "The call inside ftrace_caller goes to an ftrace ops' handler (explained)",
    ),
    Technique(
        "inline-hook",
        Severity.CRITICAL,
        ROOTKIT,
        "A JMP, CALL or INT3 written over kernel code where the kernel patches nothing: control "
        "is diverted",
    ),
    Technique(
        "hidden-bpf-trampoline",
        Severity.CRITICAL,
        ROOTKIT,
        "An ftrace site calls a BPF trampoline whose programs bpf(2) or /proc/kallsyms do not "
        "list: BPF attached to kernel functions out of sight",
    ),
    Technique(
        "patched-return",
        Severity.CRITICAL,
        ROOTKIT,
        "Kernel code rewritten to return early, skipping what the function does (a check, a log)",
    ),
    Technique(
        "patched-code",
        Severity.CRITICAL,
        ROOTKIT,
        "Kernel code bytes changed where the kernel keeps no patch site",
    ),
    Technique(
        "patched-table",
        Severity.CRITICAL,
        ROOTKIT,
        "A syscall table entry changed since the baseline",
    ),
    Technique(
        "syscall-hook",
        Severity.CRITICAL,
        ROOTKIT,
        "A system call is dispatched to code that is not its own syscall function",
    ),
    Technique(
        "ftrace-ipmodify-hook",
        Severity.CRITICAL,
        ROOTKIT,
        "An ftrace ops that may change the instruction pointer calls code no module or BPF link "
        "owns",
    ),
    Technique(
        "module-not-in-baseline",
        Severity.INFO,
        None,
        "A module loaded after the baseline: its text is not verified until the next baseline",
    ),
    Technique(
        "module-text-not-compared",
        Severity.INFO,
        None,
        "A module of the baseline is gone or moved: its text is not compared",
    ),
    Technique(
        "baseline-untrusted",
        Severity.CRITICAL,
        STORED_DATA,
        "The baseline does not verify (edited, unsigned, another key or boot): nothing is "
        "compared against it",
    ),
    # Entry points: MSRs and the IDT.
    Technique(
        "syscall-entry-hijack",
        Severity.CRITICAL,
        ROOTKIT,
        "MSR_LSTAR (or CSTAR, SYSENTER_EIP) points away from the kernel's syscall entry",
    ),
    Technique(
        "idt-hijack",
        Severity.CRITICAL,
        ROOTKIT,
        "An interrupt descriptor sends the CPU outside kernel text",
    ),
    # eBPF programs and links.
    Technique(
        "rootkit-helper",
        Severity.HIGH,
        ROOTKIT,
        "An eBPF program calls a helper rootkits use (bpf_probe_write_user, bpf_override_return, "
        "bpf_send_signal)",
    ),
    Technique(
        "sensitive-hook",
        Severity.MEDIUM,
        ROOTKIT,
        "An eBPF program runs on a path rootkits hook to hide or tamper (syscalls, exec, "
        "directory listing)",
    ),
    Technique(
        "lsm-hook",
        Severity.MEDIUM,
        ROOTKIT,
        "An LSM eBPF program can allow or deny security decisions",
    ),
    Technique(
        "orphan-program",
        Severity.MEDIUM,
        ROOTKIT,
        "An eBPF program that no process, pin or link keeps alive: something in the kernel holds "
        "it",
    ),
    Technique(
        "loader-deleted",
        Severity.HIGH,
        "T1070.004",
        "The process that holds an eBPF program runs a deleted executable",
    ),
    Technique(
        "socket-steering",
        Severity.MEDIUM,
        "T1205",
        "An sk_lookup program picks which socket gets each new connection",
    ),
    Technique(
        "covert-trigger",
        Severity.MEDIUM,
        "T1205",
        "An eBPF program on a network event a crafted packet can fire (tcp/udp/icmp/skb "
        "tracepoints, the receive path, XDP, tc): a possible remote trigger",
    ),
    Technique(
        "packet-tamper",
        Severity.MEDIUM,
        "T1565.002",
        "An eBPF program calls helpers that rewrite or redirect packets (skb_store_bytes, "
        "l3/l4_csum_replace, redirect, xdp_adjust_tail)",
    ),
    # ftrace, kprobes, livepatch and trace events.
    Technique(
        "ftrace-direct-unaccounted",
        Severity.MEDIUM,
        ROOTKIT,
        "A function's ftrace site calls code directly that no BPF trampoline accounts for",
    ),
    Technique(
        "ftrace-direct-mismatch",
        Severity.HIGH,
        ROOTKIT,
        "A function's ftrace site, or its direct ops' own direct_call, leads elsewhere than "
        "ftrace's direct_functions records for it: changed behind ftrace",
    ),
    Technique(
        "ftrace-global-tracer",
        Severity.INFO,
        None,
        "A whole-kernel tracer (current_tracer) hooks every traceable function",
    ),
    Technique(
        "ftrace-hook-sensitive-function",
        Severity.MEDIUM,
        ROOTKIT,
        "An ftrace callback hooks a function rootkits hook (listings, credentials)",
    ),
    Technique(
        "ftrace-ipmodify",
        Severity.HIGH,
        ROOTKIT,
        "An ftrace callback may change where a function returns or continues (IPMODIFY)",
    ),
    Technique(
        "kprobe-hidden-handler",
        Severity.CRITICAL,
        ROOTKIT,
        "A kprobe's handler is in memory no listed module or the kernel holds",
    ),
    Technique(
        "tracepoint-probe-unowned-code",
        Severity.CRITICAL,
        ROOTKIT,
        "A probe registered on a tracepoint (struct tracepoint.funcs in kernel memory) runs "
        "code no kernel or listed module symbol covers: a hidden module's, or code copied to "
        "memory no module owns",
    ),
    Technique(
        "tracepoint-probe-hidden-bpf",
        Severity.CRITICAL,
        ROOTKIT,
        "A tracepoint probe runs a BPF program (read from kernel memory) whose id bpf(2) does "
        "not list: BPF on a tracepoint out of sight",
    ),
    Technique(
        "kprobe-sensitive-function",
        Severity.MEDIUM,
        ROOTKIT,
        "A kprobe on a function rootkits hook: its handler runs on every call",
    ),
    Technique(
        "livepatch", Severity.INFO, None, "A kernel function is replaced by an enabled livepatch"
    ),
    Technique(
        "uprobe-credential-theft",
        Severity.HIGH,
        "T1056",
        "A uprobe (BPF or tracefs) on a library or program that handles passwords or keys "
        "(secret_libraries.toml) can read them",
    ),
    Technique(
        "uprobe-tls-intercept",
        Severity.HIGH,
        "T1040",
        "A uprobe (BPF or tracefs) on a TLS library's read/write or key functions can read "
        "traffic before encryption",
    ),
    *_events(),
    # Modules.
    Technique(
        "hidden-module",
        Severity.HIGH,
        ROOTKIT,
        "A module one view of the module list shows and another does not: taken off a list to hide",
    ),
    Technique(
        "module-in-transition",
        Severity.INFO,
        None,
        "A module is loading or unloading while the views were read",
    ),
    Technique(
        "module-list-removed",
        Severity.HIGH,
        ROOTKIT,
        "/proc/modules is gone although the kernel has a module loader",
    ),
    Technique(
        "tainted-module",
        Severity.LOW,
        KERNEL_MODULES,
        "A module carries a taint letter patchguard has no rule for",
    ),
    # Processes.
    Technique(
        "hidden-process", Severity.HIGH, ROOTKIT, "A process some views see and another hides"
    ),
    Technique(
        "process-view-mismatch",
        Severity.MEDIUM,
        ROOTKIT,
        "The process views disagree in a way hiding explains better than timing",
    ),
    Technique(
        "task-off-task-list",
        Severity.HIGH,
        ROOTKIT,
        "A task /proc, kill(2) or the BPF task iterator shows is not on the kernel's task list "
        "in memory while the pid table has it: unlinked from the list to hide it (DKOM); "
        "also a task off both whose other lists could not be read",
    ),
    Technique(
        "task-unlinked",
        Severity.CRITICAL,
        ROOTKIT,
        "A task neither the task list nor the pid table in memory has still sits on its "
        "parent's children list, its cgroup's task list or its own struct pid: unlinked from "
        "both to hide it (DKOM)",
    ),
    Technique(
        "process-invented",
        Severity.HIGH,
        ROOTKIT,
        "A pid some views show, read twice, that no kernel structure has (task list, pid "
        "table, children and cgroup lists) and pidfd_open(2) does not find: the views invent it",
    ),
    Technique(
        "memory-missed-task",
        Severity.MEDIUM,
        ROOTKIT,
        "A pid the kernel's own lookup (pidfd_open) finds but the task list and pid table "
        "read from memory lack: the memory walk missed it, so memory is no witness for it",
    ),
    Technique(
        "iterator-skips-task",
        Severity.LOW,
        ROOTKIT,
        "The kernel's BPF task iterator never hands a task to its program (neither its read "
        "nor its map copy has it) while /proc, kill(2) and kernel memory show it: the "
        "kernel's own walk leaves the task out of BPF task iterators",
    ),
    # Sockets.
    Technique(
        "hidden-socket",
        Severity.HIGH,
        ROOTKIT,
        "A socket one view lists and another hides, or a port bind(2) finds in use that no view "
        "lists, on a second look",
    ),
    # Netfilter.
    Technique(
        "hidden-netfilter-hook",
        Severity.HIGH,
        ROOTKIT,
        "A netfilter hook runs code no kernel, module or BPF program owns",
    ),
    Technique(
        "netfilter-bpf-hook",
        Severity.INFO,
        None,
        "A BPF netfilter program sees every packet at a hook",
    ),
    Technique(
        "netfilter-hook-view-mismatch",
        Severity.MEDIUM,
        ROOTKIT,
        "The hook lists and the BPF netfilter links disagree",
    ),
    Technique(
        "unowned-netfilter-bpf",
        Severity.HIGH,
        ROOTKIT,
        "A BPF netfilter program that no visible process holds",
    ),
    # Posture: lockdown, boot, CPU.
    Technique(
        "lockdown-off",
        Severity.HIGH,
        None,
        "Kernel lockdown is off: root can change the running kernel",
    ),
    Technique(
        "lockdown-missing",
        Severity.HIGH,
        None,
        "The lockdown LSM is not active: root can change the running kernel",
    ),
    Technique(
        "secure-boot-off",
        Severity.MEDIUM,
        None,
        "Secure Boot is off: the firmware boots any kernel image",
    ),
    Technique("secure-boot-unsupported", Severity.LOW, None, "The firmware has no Secure Boot"),
    Technique(
        "boot-unverified",
        Severity.INFO,
        None,
        "Not an EFI boot: there is no Secure Boot state to read",
    ),
    Technique(
        "kaslr-off",
        Severity.MEDIUM,
        None,
        "KASLR is not in effect: kernel addresses are those of the image",
    ),
    Technique(
        "weakening-boot-param",
        Severity.MEDIUM,
        None,
        "The kernel was booted with a parameter that turns a protection off",
    ),
    Technique(
        "cpu-vulnerable",
        Severity.MEDIUM,
        None,
        "The kernel reports the CPUs vulnerable to a speculative-execution attack",
    ),
    Technique(
        "unsigned-modules-loadable",
        Severity.MEDIUM,
        KERNEL_MODULES,
        "Root can load kernel modules without a valid signature",
    ),
    # Posture: sysctls, the kernel's taint flags, module taints, CPU protections.
    Technique(
        "kernel-pointers-exposed",
        Severity.MEDIUM,
        None,
        "kernel.kptr_restrict is not >= 1: kernel addresses printed with %pK are shown to "
        "unprivileged users, which hands an exploit the KASLR offset",
    ),
    Technique(
        "kernel-log-readable",
        Severity.LOW,
        None,
        "kernel.dmesg_restrict is not >= 1: any user can read the kernel log, which leaks "
        "addresses and state useful to exploits",
    ),
    Technique(
        "unprivileged-bpf",
        Severity.MEDIUM,
        None,
        "kernel.unprivileged_bpf_disabled is not >= 1: any user can load BPF programs, a large "
        "attack surface behind many privilege escalations into the kernel",
    ),
    Technique(
        "bpf-jit-unhardened",
        Severity.LOW,
        None,
        "net.core.bpf_jit_harden is not >= 1: constants in JIT-compiled BPF are not blinded, so "
        "BPF can plant chosen bytes in executable kernel memory (JIT spraying)",
    ),
    Technique(
        "modules-loadable",
        Severity.INFO,
        None,
        "kernel.modules_disabled is 0: kernel modules can be loaded",
    ),
    Technique(
        "kexec-load-allowed",
        Severity.INFO,
        None,
        "kernel.kexec_load_disabled is 0: root can boot another kernel with kexec_load",
    ),
    Technique(
        "perf-events-open",
        Severity.MEDIUM,
        None,
        "kernel.perf_event_paranoid is not >= 2: unprivileged users can profile the kernel with "
        "perf events, a source of address leaks and a large attack surface",
    ),
    Technique(
        "ftrace-enabled",
        Severity.INFO,
        None,
        "kernel.ftrace_enabled is 1: function tracing is on, so root can hook any traceable "
        "kernel function through ftrace (the tracing surface verifies those hooks)",
    ),
    Technique(
        "aslr-weak",
        Severity.MEDIUM,
        None,
        "kernel.randomize_va_space is not 2: user space address layout randomization is off or "
        "partial, which makes exploits of privileged programs reliable",
    ),
    Technique(
        "ptrace-unrestricted",
        Severity.LOW,
        None,
        "kernel.yama.ptrace_scope is not >= 1: any process can ptrace the other processes of its "
        "user and take their secrets",
    ),
    Technique(
        "sysrq-all",
        Severity.LOW,
        None,
        "kernel.sysrq is 1: every magic SysRq function is open to the console, including memory "
        "dumps and killing all processes",
    ),
    Technique(
        "symlinks-unprotected",
        Severity.LOW,
        None,
        "fs.protected_symlinks is not 1: symlinks in world-writable sticky directories are "
        "followed, the classic /tmp race used for privilege escalation",
    ),
    Technique(
        "hardlinks-unprotected",
        Severity.LOW,
        None,
        "fs.protected_hardlinks is not 1: users can hard-link files they do not own, which lets "
        "them pin and redirect privileged files",
    ),
    Technique(
        "null-page-mappable",
        Severity.MEDIUM,
        None,
        "vm.mmap_min_addr is not >= 4096: user space can map page zero, which turns kernel NULL "
        "pointer bugs into code execution",
    ),
    Technique(
        "taint-proprietary-module",
        Severity.MEDIUM,
        "T1547.006",
        "The kernel is tainted P: code nobody can review runs in the kernel",
    ),
    Technique(
        "taint-forced-module-load",
        Severity.HIGH,
        "T1547.006",
        "The kernel is tainted F: a module was loaded past the version checks, a way to force "
        "foreign code into the kernel",
    ),
    Technique(
        "taint-forced-module-unload",
        Severity.MEDIUM,
        None,
        "The kernel is tainted R: a module was pulled out by force, which can leave dangling "
        "hooks in kernel memory",
    ),
    Technique(
        "taint-out-of-tree-module",
        Severity.MEDIUM,
        "T1547.006",
        "The kernel is tainted O: code built outside the kernel tree runs in the kernel; most "
        "rootkits are out-of-tree modules",
    ),
    Technique(
        "taint-flags-cleared",
        Severity.CRITICAL,
        IMPAIR_DEFENSES,
        "The kernel's global taint lacks bits its loaded modules carry (the kernel sets them "
        "when a module loads and never clears them): someone reset the taint to hide a module",
    ),
    Technique(
        "filtered-view",
        Severity.CRITICAL,
        ROOTKIT,
        "A text view of the kernel (a /proc or /sys file as this process reads it) disagrees "
        "with the kernel memory it reports on: something filters what this process reads",
    ),
    Technique(
        "taint-unsigned-module",
        Severity.HIGH,
        "T1547.006",
        "The kernel is tainted E: a module without a valid signature was loaded, which is how "
        "rootkits enter a kernel that signs its modules",
    ),
    Technique(
        "taint-live-patched",
        Severity.MEDIUM,
        None,
        "The kernel is tainted K: kernel functions were replaced at run time; the patch must be "
        "one you installed",
    ),
    Technique(
        "taint-acpi-table-override",
        Severity.MEDIUM,
        None,
        "The kernel is tainted A: an ACPI table was replaced, and ACPI code runs with kernel "
        "privilege",
    ),
    Technique(
        "taint-fwctl-debug-write",
        Severity.MEDIUM,
        None,
        "The kernel is tainted J: device firmware was changed through a mutating fwctl debug "
        "operation",
    ),
    Technique(
        "taint-kernel-oops",
        Severity.LOW,
        None,
        "The kernel is tainted D: the kernel oopsed; failed exploits oops, and the kernel may be "
        "left inconsistent",
    ),
    Technique(
        "taint-user-taint",
        Severity.LOW,
        None,
        "The kernel is tainted U: user space asked the kernel to mark itself tainted",
    ),
    Technique(
        "taint-staging-driver",
        Severity.LOW,
        None,
        "The kernel is tainted C: a staging driver, below mainline quality, was loaded",
    ),
    Technique(
        "taint-auxiliary-taint",
        Severity.LOW,
        None,
        "The kernel is tainted X: a distribution-defined taint was set",
    ),
    Technique(
        "taint-kernel-test",
        Severity.LOW,
        None,
        "The kernel is tainted N: an in-kernel test ran; test modules do not belong in "
        "production kernels",
    ),
    Technique(
        "taint-kernel-warning",
        Severity.INFO,
        None,
        "The kernel is tainted W: the kernel issued a warning",
    ),
    Technique(
        "proprietary-module",
        Severity.LOW,
        "T1547.006",
        "A module carries taint P: proprietary (non-GPL) licence",
    ),
    Technique(
        "out-of-tree-module",
        Severity.MEDIUM,
        "T1547.006",
        "A module carries taint O: built outside the kernel tree",
    ),
    Technique(
        "unsigned-module",
        Severity.MEDIUM,
        "T1547.006",
        "A module carries taint E: loaded without a valid signature",
    ),
    Technique(
        "forced-module-load",
        Severity.HIGH,
        "T1547.006",
        "A module carries taint F: force-loaded past version checks",
    ),
    Technique(
        "staging-module",
        Severity.INFO,
        "T1547.006",
        "A module carries taint C: a staging (unfinished) driver",
    ),
    Technique(
        "livepatch-module",
        Severity.INFO,
        "T1547.006",
        "A module carries taint K: a live patch of the kernel",
    ),
    Technique(
        "auxiliary-taint-module",
        Severity.INFO,
        "T1547.006",
        "A module carries taint X: marked by the distribution (auxiliary)",
    ),
    Technique(
        "randstruct-module",
        Severity.INFO,
        "T1547.006",
        "A module carries taint T: built with the struct randomization plugin",
    ),
    Technique(
        "test-module", Severity.INFO, "T1547.006", "A module carries taint N: an in-kernel test"
    ),
    Technique(
        "no-smep",
        Severity.MEDIUM,
        None,
        "The CPUs do not enforce smep: the kernel will execute code placed in user-space pages "
        "(ret2usr)",
    ),
    Technique(
        "no-smap",
        Severity.MEDIUM,
        None,
        "The CPUs do not enforce smap: the kernel will read and write data an attacker placed in "
        "user space",
    ),
    Technique(
        "patchguard-object",
        Severity.INFO,
        None,
        "A BPF program of another patchguard process (verified by its process and its tag)",
    ),
    # Exceptions (policy).
    Technique(
        "exception-match",
        Severity.INFO,
        None,
        "A hook is exactly as a live exception declares it (allowed, shown)",
    ),
    Technique(
        "exception-mismatch",
        Severity.HIGH,
        ROOTKIT,
        "A hook that a live exception covers differs from what it declares",
    ),
    Technique(
        "exception-lapsed",
        Severity.LOW,
        None,
        "A BPF program still runs exactly as an exception declared it, but that exception "
        "expired or was revoked and none in force covers it",
    ),
    Technique(
        "ledger-split-view",
        Severity.CRITICAL,
        STORED_DATA,
        "The exception ledger's log signed two checkpoints that cannot both be true: it shows "
        "different histories to different parties",
    ),
    Technique(
        "ledger-checkpoint-invalid",
        Severity.CRITICAL,
        STORED_DATA,
        "The exception ledger's checkpoint does not verify under the log key the host pins, or "
        "the host's copy of the ledger is not the history the witnesses cosigned",
    ),
    Technique(
        "exception-not-witnessed",
        Severity.MEDIUM,
        None,
        "An exception in the ledger is not under a checkpoint cosigned by the quorum of "
        "witnesses: it is not applied until they cosign one",
    ),
    # The guard itself.
    Technique(
        "config-changed",
        Severity.CRITICAL,
        IMPAIR_DEFENSES,
        "The guard's config changed without a reload",
    ),
    Technique(
        "config-signature-invalid",
        Severity.CRITICAL,
        IMPAIR_DEFENSES,
        "The guard's config is not signed by this host's key",
    ),
    Technique(
        "config-unsigned",
        Severity.MEDIUM,
        IMPAIR_DEFENSES,
        "The guard's config carries no signature",
    ),
    Technique(
        "guard-files-changed",
        Severity.CRITICAL,
        IMPAIR_DEFENSES,
        "The guard's own installed files changed while it runs",
    ),
    Technique(
        "baseline-replaced",
        Severity.CRITICAL,
        STORED_DATA,
        "The baseline file is not the one the guard started with (or was reloaded with), even "
        "if it verifies: a re-created baseline hides what changed before it",
    ),
    Technique(
        "ledger-root-changed",
        Severity.CRITICAL,
        STORED_DATA,
        "The exception ledger's first entry is not signed by the owner key the guard's config "
        "pins: the ledger was rebuilt",
    ),
    Technique(
        "surface-lost",
        Severity.HIGH,
        IMPAIR_DEFENSES,
        "A surface the guard could read when it started cannot be read any more",
    ),
    Technique(
        "ledger-head-lost",
        Severity.CRITICAL,
        STORED_DATA,
        "The exception ledger does not extend the head the guard last accepted (or its config "
        "pins): it was cut short, emptied, removed or rebuilt",
    ),
    Technique(
        "ledger-locked",
        Severity.HIGH,
        IMPAIR_DEFENSES,
        "Another process held the exception ledger's lock longer than the guard waits: the "
        "ledger could not be read",
    ),
    Technique(
        "guard-state-untrusted",
        Severity.CRITICAL,
        IMPAIR_DEFENSES,
        "The guard's signed state (its pinned baseline and ledger head, its last run) does "
        "not verify with the host key: it was edited or forged",
    ),
)
TECHNIQUES: Mapping[str, Technique] = {t.name: t for t in _CATALOGUE}


def markdown() -> str:
    """docs/techniques.md: the whole catalogue as one table."""
    rows = [
        f"| `{t.name}` | {t.severity.label} | {t.attack_id or ''} | {t.meaning} |"
        for t in sorted(_CATALOGUE, key=lambda t: t.name)
    ]
    head = "| technique | default severity | ATT&CK | meaning |\n|---|---|---|---|"
    intro = (
        "# Techniques\n\nEvery kind of finding patchguard reports (generated from "
        "`src/patchguard/techniques.py` by `patchguard techniques --markdown`).\n\n"
    )
    return intro + head + "\n" + "\n".join(rows) + "\n"
