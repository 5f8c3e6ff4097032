"""Tracing hooks: ftrace callbacks (enabled_functions), kprobes (kprobes/list) and dynamic trace
events (kprobe_events, uprobe_events, dynamic_events).

These are the "debug routines" of PatchGuard's list, in Linux terms. ftrace with IPMODIFY is how
modern loadable rootkits replace kernel functions without touching their code; a kprobe or a
direct ftrace call on a credential or syscall function does the same at one site. The same
interfaces are used by livepatch, BPF, perf and security agents, so each hook becomes a finding
that names the function, its owner and why it matters, and the ledger (later) says which are
sanctioned.

Formats follow the kernel's own printers: t_show() and add_trampoline_func() in
kernel/trace/ftrace.c, report_probe() in kernel/kprobes.c, trace_kprobe_show(),
trace_uprobe_show() and trace_fprobe_show() in kernel/trace/.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.kernel.errors import KernelAccessError, is_enoent
from patchguard.kernel.mounts import ensure_mounted
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.ebpf import uprobes
from patchguard.surfaces.ebpf.assess import visible
from patchguard.surfaces.ebpf.uprobes import ProbedSite, SecretHit
from patchguard.surfaces.reading import Reading, records_of

if TYPE_CHECKING:
    from pathlib import Path

    from patchguard.kernel import Kernel
from patchguard.kernel.livepatch import Livepatched, read_livepatches
from patchguard.kernel.proc_modules import function_name, parse_proc_modules

SURFACE = "tracing"
ROOTKIT = "T1014"

# tracefs has its own mount since 4.1; older setups only have it inside debugfs.
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
KPROBE_LIST = "/sys/kernel/debug/kprobes/list"
NO_KPROBES = "kprobes not built or debugfs has no kprobes/list"
# dynamic_events lists every kind (kprobe, uprobe, fprobe, eprobe, synthetic); the older files
# list one kind each and are read too, for kernels or mounts without dynamic_events.
EVENT_FILES = ("dynamic_events", "kprobe_events", "uprobe_events")
# A whole-kernel tracer (current_tracer=function) hooks tens of thousands of functions through
# one ops; above this many, per-function "sensitive function" findings would only bury the rest.
GLOBAL_TRACER_FUNCTIONS = 1000

T = TypeVar("T")


# --- what a hooked function is ------------------------------------------------------------------

# Functions rootkits hook, by what hooking them gives: exact names first, then name prefixes.
SENSITIVE_NAMES: dict[str, str] = {
    "commit_creds": "credentials",
    "prepare_creds": "credentials",
    "prepare_kernel_cred": "credentials",
    "override_creds": "credentials",
    "revert_creds": "credentials",
    "__sys_setuid": "credentials",
    "__sys_setreuid": "credentials",
    "__sys_setresuid": "credentials",
    "filldir": "directory-listing",
    "filldir64": "directory-listing",
    "compat_filldir": "directory-listing",
    "iterate_dir": "directory-listing",
    "proc_pid_readdir": "directory-listing",
    "proc_root_readdir": "directory-listing",
    "__x64_sys_getdents": "directory-listing",
    "__x64_sys_getdents64": "directory-listing",
    "tcp4_seq_show": "network-listing",
    "tcp6_seq_show": "network-listing",
    "udp4_seq_show": "network-listing",
    "udp6_seq_show": "network-listing",
    "inet_sk_diag_fill": "network-listing",
    "packet_rcv": "network-listing",
    "tpacket_rcv": "network-listing",
    "m_show": "module-list",
    "load_module": "module-list",
    "do_init_module": "module-list",
    "free_module": "module-list",
    "__x64_sys_init_module": "module-list",
    "__x64_sys_finit_module": "module-list",
    "__x64_sys_delete_module": "module-list",
    "kallsyms_lookup_name": "kallsyms",
    "kallsyms_on_each_symbol": "kallsyms",
    "do_filp_open": "file",
    "filp_open": "file",
    "kernel_read": "file",
    "kernel_write": "file",
}
SENSITIVE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("__x64_sys_", "syscall"),
    ("__ia32_sys_", "syscall"),
    ("__ia32_compat_sys_", "syscall"),
    ("__x32_compat_sys_", "syscall"),
    ("__arm64_sys_", "syscall"),
    ("__se_sys_", "syscall"),
    ("__do_sys_", "syscall"),
    ("do_sys_", "syscall"),
    ("ksys_", "syscall"),
    ("x64_sys_call", "syscall"),
    ("vfs_", "file"),
    ("security_", "security"),
    ("selinux_", "security"),
    ("apparmor_", "security"),
    ("bpf_lsm_", "security"),
    ("cap_", "security"),
)
# The ftrace handler of kprobes placed on a function's ftrace site ([FTRACE] in kprobes/list).
KPROBE_HANDLER = "kprobe_ftrace_handler"
KLP_HANDLER = "klp_ftrace_handler"
# Hooks there serve hiding or finding hidden kernel symbols, which tools rarely need.
ROOTKIT_ONLY = frozenset({"module-list", "kallsyms"})


def sensitive_category(function: str) -> str | None:
    """What hooking `function` gives an attacker ("credentials", "syscall", ...), or None."""
    name = function.split(".", 1)[0]  # compiler clones: filldir64.cold, vfs_read.isra.0
    if name in SENSITIVE_NAMES:
        return SENSITIVE_NAMES[name]
    return next((cat for prefix, cat in SENSITIVE_PREFIXES if name.startswith(prefix)), None)


def symbol_name(pS: str) -> str:
    """The bare symbol of a %pS rendering: "fprobe_handler+0x0/0x30 [mod]" -> "fprobe_handler"."""
    return pS.split(" ", 1)[0].split("+", 1)[0]


def symbol_module(pS: str) -> str | None:
    found = re.search(r"\[([^\]\s]+)\]\s*$", pS)
    return found.group(1) if found else None


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FtraceCallback:
    """One callback attached at a function's ftrace site, as t_show() prints it.

    via "tramp": a trampoline (`tramp: <trampoline> (<ops->func>)`); via "ops": the one ops a
    call-ops site calls (`ops: <ops> (<ops->func>)`). `owner` is the handler that runs.
    """

    via: str
    address: str  # %pS of the trampoline or ops; "ERROR!" when ftrace found none
    owner: str | None  # %pS of ops->func
    calls: str | None = None  # " ->%pS": what the trampoline calls (x86: the ops function)


@dataclass(frozen=True)
class FtraceHook:
    """One line of enabled_functions: a function whose ftrace site is live, and what is on it."""

    function: str
    module: str | None
    refcount: int  # how many ftrace_ops hook it
    flags: str  # R regs, I IPMODIFY, D direct, O call-ops, M modified (ever IPMODIFY/direct)
    callbacks: tuple[FtraceCallback, ...] = ()
    calls: str | None = None  # " ->%pS" printed without a trampoline (the list function)
    direct: str | None = None  # "direct-->%pS": the direct-call target (BPF trampolines)

    @property
    def ipmodify(self) -> bool:
        return "I" in self.flags

    @property
    def direct_call(self) -> bool:
        return "D" in self.flags

    @property
    def owners(self) -> tuple[str, ...]:
        return tuple(cb.owner for cb in self.callbacks if cb.owner)


@dataclass(frozen=True)
class Kprobe:
    """One line of debugfs kprobes/list (report_probe() in kernel/kprobes.c)."""

    address: int | None  # None when kallsyms hides addresses from the reader (printed as 0)
    probe_type: str  # kprobe, kretprobe (jprobe on kernels before 4.15)
    symbol: str | None  # None when the kernel could not name the address
    offset: int
    module: str | None
    flags: tuple[str, ...] = ()  # GONE, DISABLED, OPTIMIZED, FTRACE
    target: str = ""  # as printed: "do_sys_openat2+0x0" or an unresolved %pS
    # The function that runs there, read from kprobe_table (None: not readable here), named
    # as %ps would ("0x..." when no listed module holds it), and the module it is in.
    handler: str | None = None
    handler_module: str | None = None

    @property
    def active(self) -> bool:
        return "GONE" not in self.flags and "DISABLED" not in self.flags


@dataclass(frozen=True)
class DynamicEvent:
    """A dynamic trace event someone defined (p:, r:, f:, t:, e:, s: lines of tracefs)."""

    event_type: str  # kprobe kretprobe uprobe uretprobe fprobe fexit tprobe eprobe synthetic other
    group: str
    event: str
    target: str | None  # kprobe: [mod:]symbol[+off] or address; uprobe: /path+0xoffset
    args: tuple[str, ...] = ()
    line: str = ""
    site: ProbedSite | None = None  # uprobe: file, build-id and symbol (collect resolves it)
    secret: SecretHit | None = None  # uprobe on a secret-handling file (secret_libraries.toml)

    @property
    def binary(self) -> str | None:
        """The probed file of a uprobe."""
        if self.event_type not in USER_PROBES or not self.target or "+0x" not in self.target:
            return None
        return self.target.rpartition("+0x")[0]

    @property
    def offset(self) -> int | None:
        if self.binary is None or self.target is None:
            return None
        return int(self.target.rpartition("+")[2], 16)


# --- parsers: pure functions over text ----------------------------------------------------------

_FTRACE_LINE = re.compile(
    r"^(?P<func>\S+)(?: \[(?P<mod>[^\]]+)\])? \((?P<count>\d+)\)(?P<rest>.*)$"
)
_CALLBACK = re.compile(
    r"^(?P<kind>tramp|ops): (?P<address>[^()]+?) \((?P<owner>[^()]*)\)(?P<rest>.*)$"
)


def _arrow(text: str) -> str | None:
    """The " ->%pS" that add_trampoline_func() appends, without any " {subops}" after it."""
    if " ->" not in text:
        return None
    return text.split(" ->", 1)[1].split(" {", 1)[0].strip() or None


def _callback(segment: str) -> FtraceCallback | None:
    if segment.endswith("ERROR!"):  # ftrace found no ops for a live site: keep it, it is odd
        return FtraceCallback(segment.split(":", 1)[0], "ERROR!", None)
    found = _CALLBACK.match(segment)
    if found is None:
        return None
    return FtraceCallback(
        found["kind"], found["address"].strip(), found["owner"].strip(), _arrow(found["rest"])
    )


def _ftrace_hook(line: str) -> FtraceHook | None:
    found = _FTRACE_LINE.match(line)
    if found is None:
        return None
    head, *segments = found["rest"].split("\t")
    flag_part = head.split(" ->", 1)[0]
    callbacks = tuple(cb for cb in map(_callback, segments) if cb is not None)
    return FtraceHook(
        function=found["func"],
        module=found["mod"],
        refcount=int(found["count"]),
        flags="".join(ch for ch in flag_part if ch.isalpha()),
        callbacks=callbacks,
        calls=_arrow(head),
    )


def parse_enabled_functions(text: str) -> list[FtraceHook]:
    """enabled_functions: `func[ [mod]] (refs) R I D O M\\ttramp: X (Y) ->Z\\tops: X (Y)`, and a
    continuation line `\\tdirect-->X` under functions with a direct call."""
    hooks: list[FtraceHook] = []
    for line in text.splitlines():
        if line.lstrip().startswith("direct-->") and hooks:
            target = line.split("-->", 1)[1].strip()
            hooks[-1] = replace(hooks[-1], direct=target)
            continue
        hook = _ftrace_hook(line.rstrip("\n"))
        if hook is not None:
            hooks.append(hook)
    return hooks


KPROBE_KINDS = {"k": "kprobe", "r": "kretprobe", "j": "jprobe"}


def _kprobe(line: str) -> Kprobe | None:
    # "%px  %s  %s+0x%x  %s " then "[GONE][DISABLED][OPTIMIZED][FTRACE]" run together.
    tokens = line.split()
    if len(tokens) < 3 or tokens[1] not in KPROBE_KINDS:
        return None
    try:
        address = int(tokens[0], 16) or None
    except ValueError:
        return None
    rest = [t for t in tokens[3:] if not t.startswith("[")]
    flags = tuple(re.findall(r"\[([A-Z]+)\]", " ".join(tokens[3:])))
    target = tokens[2]
    symbol, plus, off = target.partition("+0x")
    resolved = bool(plus) and not target.startswith("0x")
    return Kprobe(
        address=address,
        probe_type=KPROBE_KINDS[tokens[1]],
        symbol=symbol if resolved else None,
        offset=int(off.split("/", 1)[0], 16) if resolved else 0,
        module=rest[0] if rest else None,
        flags=flags,
        target=target,
    )


def parse_kprobe_list(text: str) -> list[Kprobe]:
    """debugfs kprobes/list, one registered probe per line (aggregated probes: one per user)."""
    return [p for p in map(_kprobe, text.splitlines()) if p is not None]


_EVENT_LINE = re.compile(
    r"^(?P<type>[a-z])(?P<maxactive>\d*):(?P<group>[^/\s]+)/(?P<event>\S+)"
    r"(?:\s+(?P<target>\S+))?(?P<args>.*)$"
)
_UPROBE_TARGET = re.compile(r"^/.*:0x[0-9a-fA-F]+(?:\(0x[0-9a-fA-F]+\))?$")
USER_PROBES = ("uprobe", "uretprobe")
_EVENT_KINDS = {"f": "fprobe", "t": "tprobe", "e": "eprobe", "s": "synthetic"}


def _event_kind(letter: str, target: str | None) -> str:
    if letter in "pr":
        user = target is not None and _UPROBE_TARGET.match(target) is not None
        base = "uprobe" if user else "kprobe"
        return base if letter == "p" else base.replace("probe", "retprobe")
    if letter == "f" and target and target.endswith(("%return", ":exit")):
        return "fexit"
    return _EVENT_KINDS.get(letter, "other")


def _uprobe_spelling(target: str) -> str:
    """tracefs `/bin/bash:0x00000000004245c0(0x3c)` -> `/bin/bash+0x4245c0`, the one spelling
    of a uprobe target (the reference counter offset stays in the event's line)."""
    path, _, rest = target.rpartition(":")
    return uprobes.spell(path, int(rest.split("(", 1)[0], 16))


def parse_dynamic_events(text: str) -> list[DynamicEvent]:
    """kprobe_events / uprobe_events / dynamic_events lines, e.g. `p:kprobes/myprobe
    do_sys_open dfd=%ax`, `r4:kprobes/r vfs_read`, `p:uprobes/x /bin/bash:0x00000000004245c0`."""
    events = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _EVENT_LINE.match(line.strip())
        if found is None:  # older synthetic events print "name<TAB>fields": keep them as seen
            name = line.split()[0]
            events.append(DynamicEvent("other", "synthetic", name, None, (), line.strip()))
            continue
        kind, target = _event_kind(found["type"], found["target"]), found["target"]
        events.append(
            DynamicEvent(
                event_type=kind,
                group=found["group"],
                event=found["event"],
                target=_uprobe_spelling(target) if kind in USER_PROBES else target,
                args=tuple(found["args"].split()),
                line=line.strip(),
            )
        )
    return events


# --- collect ------------------------------------------------------------------------------------


def _populated(path: Path) -> bool:
    """A mount point exists as an empty directory even when nothing is mounted on it."""
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return False


def _tracefs(r: Reading) -> str | None:
    reason = ensure_mounted("tracefs", r.kernel.root)
    found = next((d for d in TRACEFS_DIRS if _populated(r.kernel.path(d))), None)
    if found is None:
        r.gap(
            "ftrace enabled_functions and dynamic trace events (tracefs)",
            reason or f"tracefs is mounted neither at {TRACEFS_DIRS[0]} nor at {TRACEFS_DIRS[1]}",
        )
    return found


def _collect_ftrace(r: Reading, tracefs: str) -> None:
    text = r.text("ftrace enabled_functions", f"{tracefs}/enabled_functions")
    if text is not None:
        r.records.extend(parse_enabled_functions(text))


def _event_file(r: Reading, tracefs: str, name: str) -> str:
    path = f"{tracefs}/{name}"
    try:
        text = r.kernel.read_text(path)
    except KernelAccessError as exc:
        # The file exists exactly when its kind of event is built into the kernel.
        absent = "; this kernel does not build these events" if is_enoent(exc) else ""
        r.gap(f"dynamic trace events ({name})", f"{exc}{absent}")
        return ""
    r.files_read += 1
    return text


def _collect_events(r: Reading, tracefs: str) -> None:
    seen: set[tuple[str, str]] = set()
    secrets = _secrets(r)
    for name in EVENT_FILES:
        for event in parse_dynamic_events(_event_file(r, tracefs, name)):
            if (event.group, event.event) not in seen:  # dynamic_events repeats the others
                seen.add((event.group, event.event))
                r.records.append(_resolved(r, event, secrets))


def _secrets(r: Reading) -> tuple[uprobes.SecretEntry, ...]:
    try:
        return uprobes.load_secrets()
    except uprobes.SecretListError as exc:
        r.gap("site secret-libraries list", str(exc))
        return uprobes.shipped_secrets()


def _resolved(
    r: Reading, event: DynamicEvent, secrets: tuple[uprobes.SecretEntry, ...]
) -> DynamicEvent:
    """A uprobe event with its file's build-id and symbol, and what it can read."""
    if event.binary is None or event.offset is None:
        return event
    site = uprobes.resolve(event.binary, event.offset, r.kernel.root)
    return replace(event, site=site, secret=uprobes.secret_at(site, secrets))


def _collect_kprobes(r: Reading) -> None:
    reason = ensure_mounted("debugfs", r.kernel.root)
    try:
        r.kernel.path(KPROBE_LIST).stat()
    except FileNotFoundError:
        r.gap("kprobes (debugfs kprobes/list)", reason or f"{NO_KPROBES} ({KPROBE_LIST} absent)")
        return
    except OSError:
        pass  # EACCES and the like: the read below reports it with its reason
    text = r.text("kprobes (debugfs kprobes/list)", KPROBE_LIST)
    if text is not None:
        probes = parse_kprobe_list(text)
        r.records.extend(_with_handlers(r, probes) if probes else probes)


def _with_handlers(r: Reading, probes: list[Kprobe]) -> list[Kprobe]:
    """The probes with the handler that registered each, from the kernel's kprobe_table."""
    from patchguard.kernel.kprobe_table import read_handlers

    kernel = r.kernel
    try:
        handlers = read_handlers(kernel.memory(), kernel.kallsyms, kernel.vmlinux_btf)
    except KernelAccessError as exc:
        r.gap("kprobe handlers (kprobe_table)", str(exc))
        return probes
    modules = parse_proc_modules(r.optional("/proc/modules") or "")
    by_probe = {(h.address, h.kind): h.handler for h in handlers}
    out = []
    for probe in probes:
        handler = by_probe.get((probe.address or 0, probe.probe_type))
        if handler is None:
            out.append(probe)
            continue
        name, module = function_name(handler, kernel.kallsyms, modules)
        out.append(replace(probe, handler=name, handler_module=module))
    return out


def _counts(r: Reading) -> dict[str, int]:
    hooks = records_of(r.records, FtraceHook)
    events = records_of(r.records, DynamicEvent)
    return {
        "ftrace_functions": len(hooks),
        "ipmodify": sum(h.ipmodify for h in hooks),
        "direct": sum(h.direct_call for h in hooks),
        "kprobes": len(records_of(r.records, Kprobe)),
        "dynamic_events": len(events),
        "uprobes": sum(e.binary is not None for e in events),
        # Says that files were read and held nothing, which zero hooks alone cannot say.
        "files_read": r.files_read,
    }


class TracingSurface:
    name = SURFACE
    title = "ftrace, kprobes and trace events"

    def collect(self, kernel: Kernel) -> SurfaceState:
        r = Reading(SURFACE, kernel)
        tracefs = _tracefs(r)
        if tracefs is not None:
            _collect_ftrace(r, tracefs)
            _collect_events(r, tracefs)
        _collect_kprobes(r)
        r.records.extend(read_livepatches(kernel))
        return SurfaceState(SURFACE, tuple(r.records), _counts(r), tuple(r.gaps))

    def assess(self, state: SurfaceState) -> list[Finding]:
        return assess_records(state.records)


# --- assess -------------------------------------------------------------------------------------


def _finding(
    technique: str,
    severity: Severity,
    subject: str,
    summary: str,
    evidence: Evidence,
    attack_id: str | None = ROOTKIT,
) -> Finding:
    return Finding(
        surface=SURFACE,
        technique=technique,
        severity=severity,
        subject=subject,
        summary=summary,
        disposition=Disposition.SUSPICIOUS,
        attack_id=attack_id,
        evidence=evidence,
    )


def _hook_evidence(hook: FtraceHook) -> dict[str, str | int | bool | list[str] | None]:
    return {
        "function": hook.function,
        "module": hook.module,
        "flags": hook.flags,
        "refcount": hook.refcount,
        "owners": list(hook.owners),
        "trampolines": [cb.address for cb in hook.callbacks if cb.via == "tramp"],
        "direct": hook.direct,
    }


def _subject(function: str, module: str | None) -> str:
    return f"{function} [{module}]" if module else function


def _bpf_trampoline(target: str | None) -> bool:
    # BPF trampolines are named bpf_trampoline_<key> in kallsyms (module "bpf"); the BPF link
    # that owns one is listed by the ebpf surface.
    return target is not None and symbol_name(target).startswith("bpf_trampoline_")


def _kprobe_site(hook: FtraceHook, probed: set[str]) -> bool:
    """The hook is the ftrace site of a kprobe that kprobes/list shows (and is assessed there).

    A kprobe handler on a function kprobes/list does not show stays a finding here.
    """
    owners = {symbol_name(owner) for owner in hook.owners}
    return owners == {KPROBE_HANDLER} and hook.function in probed


def _ipmodify(hook: FtraceHook) -> Finding:
    owners = ", ".join(hook.owners) or "an unnamed ops"
    return _finding(
        "ftrace-ipmodify",
        Severity.HIGH,
        _subject(hook.function, hook.module),
        f"An ftrace callback ({owners}) may change where {hook.function} returns to "
        "(IPMODIFY): the way loadable rootkits replace kernel functions; livepatch does it too.",
        {**_hook_evidence(hook), "category": sensitive_category(hook.function)},
    )


def _direct_unaccounted(hook: FtraceHook) -> Finding:
    target = hook.direct or "a target ftrace could not name"
    return _finding(
        "ftrace-direct-unaccounted",
        Severity.MEDIUM,
        _subject(hook.function, hook.module),
        f"{hook.function} calls {target} directly from its ftrace site, and no BPF trampoline "
        "accounts for it.",
        _hook_evidence(hook),
    )


def _sensitive_hook(hook: FtraceHook, category: str) -> Finding:
    kprobe_owned = {symbol_name(o) for o in hook.owners} == {KPROBE_HANDLER}
    unlisted = " (a kprobe handler, yet kprobes/list shows no kprobe there)" if kprobe_owned else ""
    return _finding(
        "ftrace-hook-sensitive-function",
        Severity.HIGH if category in ROOTKIT_ONLY else Severity.MEDIUM,
        _subject(hook.function, hook.module),
        f"ftrace hooks {hook.function} ({category}){unlisted}: a callback sees or changes every "
        "call, the place rootkits hook to hide and to raise privileges.",
        {**_hook_evidence(hook), "category": category},
    )


def _livepatch(hook: FtraceHook, patch: Livepatched) -> Finding:
    return Finding(
        SURFACE,
        "livepatch",
        Severity.INFO,
        _subject(hook.function, hook.module),
        f"{hook.function} is replaced by {patch}: the kernel's own live patching, "
        "through ftrace with IPMODIFY",
        Disposition.EXPLAINED,
        None,
        {**_hook_evidence(hook), "livepatch": str(patch), "patch": patch.patch},
    )


def _assess_hook(
    hook: FtraceHook, per_function: bool, probed: set[str], patched: dict[str, Livepatched]
) -> list[Finding]:
    patch = patched.get(hook.function)
    if patch is not None and {symbol_name(o) for o in hook.owners} == {KLP_HANDLER}:
        return [_livepatch(hook, patch)]
    found = [_ipmodify(hook)] if hook.ipmodify else []
    if hook.direct_call and not _bpf_trampoline(hook.direct):
        found.append(_direct_unaccounted(hook))
    category = sensitive_category(hook.function)
    # IPMODIFY already says more; a kprobe's own site is assessed with the kprobe.
    if category and not hook.ipmodify and per_function and not _kprobe_site(hook, probed):
        found.append(_sensitive_hook(hook, category))
    return found


def _assess_ftrace(
    hooks: list[FtraceHook], probed: set[str], patched: dict[str, Livepatched]
) -> list[Finding]:
    per_function = len(hooks) <= GLOBAL_TRACER_FUNCTIONS
    found = [f for hook in hooks for f in _assess_hook(hook, per_function, probed, patched)]
    if not per_function:
        found.append(
            _finding(
                "ftrace-global-tracer",
                Severity.INFO,
                f"{len(hooks)} functions",
                f"ftrace hooks {len(hooks)} functions at once: a whole-kernel tracer "
                "(current_tracer) is running; sensitive functions are not listed one by one.",
                {"functions": len(hooks)},
                attack_id=None,
            )
        )
    return found


def _kprobe_evidence(probe: Kprobe) -> dict[str, str | int | bool | list[str] | None]:
    return {
        "function": probe.symbol,
        "offset": probe.offset,
        "module": probe.module,
        "handler": probe.handler,
        "handler_module": probe.handler_module,
        "kind": probe.probe_type,
        "flags": list(probe.flags),
        "address": f"{probe.address:#x}" if probe.address else None,
    }


def _registered_by(probe: Kprobe) -> str:
    if probe.handler is None:
        return ""
    return f", registered by {_subject(probe.handler, probe.handler_module)},"


def _hidden_handler(probe: Kprobe) -> Finding:
    return Finding(
        SURFACE,
        "kprobe-hidden-handler",
        Severity.CRITICAL,
        _subject(probe.target, probe.module),
        f"The {probe.probe_type} on {probe.target} runs code at {probe.handler}, which no "
        "kernel or listed module symbol covers: a module that took itself off the lists.",
        Disposition.TAMPERING,
        ROOTKIT,
        _kprobe_evidence(probe),
    )


def _assess_kprobe(probe: Kprobe) -> list[Finding]:
    found = [_hidden_handler(probe)] if (probe.handler or "").startswith("0x") else []
    category = sensitive_category(probe.symbol) if probe.symbol else None
    if category is None:
        return found
    severity = Severity.HIGH if category in ROOTKIT_ONLY else Severity.MEDIUM
    if probe.active:
        state = "active: its handler runs on every call"
    else:
        off = ", ".join(f for f in probe.flags if f in ("GONE", "DISABLED"))
        state = f"registered but not armed ({off}): its handler runs once it is enabled"
    found.append(
        _finding(
            "kprobe-sensitive-function",
            severity if probe.active else Severity.LOW,
            _subject(probe.target, probe.module),
            f"A {probe.probe_type} on {probe.symbol} ({category}){_registered_by(probe)} is "
            f"{state}; these functions are where rootkits hook to hide and to raise privileges.",
            {**_kprobe_evidence(probe), "category": category},
        )
    )
    return found


def _assess_event(event: DynamicEvent) -> list[Finding]:
    evidence: Evidence = {
        "kind": event.event_type,
        "group": event.group,
        "event": event.event,
        "target": event.target,
        "line": event.line,
    }
    if event.site is not None and event.secret is not None:
        site, hit = event.site, event.secret
        return [
            _finding(
                hit.technique,
                hit.severity,
                f"{event.group}/{event.event}",
                visible(
                    f"A tracefs {hit.summary(event.event_type, site)[2:]}, in every process "
                    "that runs it."
                ),
                {
                    **evidence,
                    "target": site.spelled,
                    "probed_file": site.path,
                    "symbol": site.symbol or "unknown",
                    "build_id": site.build_id or "unknown",
                    "reads": hit.reads,
                },
                attack_id=hit.attack_id,
            )
        ]
    if event.site is not None:
        evidence = {**evidence, "target": event.site.spelled}
    return [
        _finding(
            f"dynamic-{event.event_type}-event",
            Severity.INFO,
            f"{event.group}/{event.event}",
            f"A {event.event_type} trace event is defined on "
            f"{evidence['target'] or 'an unnamed target'}.",
            evidence,
            attack_id=None,
        )
    ]


def assess_records(records: Sequence[object]) -> list[Finding]:
    probed = {p.symbol for p in records_of(records, Kprobe) if p.symbol and "FTRACE" in p.flags}
    patched = {p.function: p for p in records_of(records, Livepatched)}
    found = _assess_ftrace(records_of(records, FtraceHook), probed, patched)
    found += [f for probe in records_of(records, Kprobe) for f in _assess_kprobe(probe)]
    found += [f for event in records_of(records, DynamicEvent) for f in _assess_event(event)]
    return found


__all__ = [
    "NO_KPROBES",
    "DynamicEvent",
    "FtraceCallback",
    "FtraceHook",
    "Kprobe",
    "TracingSurface",
    "assess_records",
    "parse_dynamic_events",
    "parse_enabled_functions",
    "parse_kprobe_list",
    "sensitive_category",
]
