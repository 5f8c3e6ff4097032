"""The tracing surface's records: ftrace hooks and their callbacks, kprobes, dynamic trace
events."""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.kernel.livepatch import Livepatched
from patchguard.surfaces.base import RecordSet
from patchguard.surfaces.ebpf.records import BpfProgram
from patchguard.surfaces.ebpf.uprobes import ProbedSite, SecretHit
from patchguard.text import visible

USER_PROBES = ("uprobe", "uretprobe")


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


@dataclass(frozen=True)
class OpsRecord:
    """One enabled ftrace_ops as memory holds it, named."""

    handler: str  # ops->func, named by bounds (kernel/attribution.py)
    handler_module: str | None
    flags: tuple[str, ...]
    functions: int  # how many functions its filter hash holds
    all_functions: bool  # an empty filter hash: it traces every function
    names: tuple[str, ...]  # the first SHOWN of them
    # enabled_functions was read and does not print these functions the ops traces
    hidden: tuple[str, ...] = ()
    hidden_count: int = 0


@dataclass(frozen=True)
class DirectMismatch:
    """A function whose ftrace site calls elsewhere than its direct ops records (`via` "site"),
    or whose direct ops' own direct_call does (`via` "direct_call", 6.6+: what call_direct_funcs
    calls where the site is shared)."""

    function: str
    handler: str
    recorded: int  # the direct target ftrace's direct_functions records
    calls: int | None  # what the site's CALL goes to (None: not a call), or direct_call
    code: str  # the site's bytes ("" for direct_call)
    via: str = "site"
    calls_name: str | None = None  # what direct_call reaches, named (symbol [module])


@dataclass(frozen=True)
class DirectProgram:
    """One program the BPF trampoline of a direct call runs, as memory names it, and the ebpf
    surface's record of it (None: bpf(2) does not list its id, or its struct was unreadable)."""

    struct: int  # its struct bpf_prog
    prog_id: int | None  # None: the struct could not be read
    name: str
    tag: str
    attach: str  # fentry or fexit: before or after the traced function
    attach_to: str | None  # the function it was verified for (prog->aux->attach_func_name)
    listed: bool  # bpf(2) lists its id
    record: BpfProgram | None = None
    pins: tuple[str, ...] = ()  # bpffs paths that keep it or its links alive

    @property
    def said(self) -> str:
        if self.prog_id is None:
            return f"{self.attach} program struct bpf_prog {self.struct:#x} (unreadable)"
        on = f" on {visible(self.attach_to)}" if self.attach_to else ""
        unlisted = "" if self.listed else ", which bpf(2) does not list"
        named = f"{self.attach} prog {self.prog_id} {visible(self.name)!r}"
        return f"{named} (tag {self.tag}{on}{unlisted})"


@dataclass(frozen=True)
class DirectCall:
    """A function whose ftrace site ftrace's direct_functions sends to a direct target, and what
    memory finds there: a BPF trampoline and its programs, or code of no trampoline."""

    function: str
    module: str | None
    target: int
    target_name: str  # named by bounds: a [bpf] symbol, a module's, or memory of no module
    trampoline: str | None = None  # its symbol, where the code there is a BPF trampoline
    # a BPF trampoline the kernel's BPF symbol list and /proc/kallsyms hold, each of whose
    # programs bpf(2) lists: the only direct call a [[bpf_program]] entry can sanction
    known: bool = False
    programs: tuple[DirectProgram, ...] = ()

    @property
    def prog_ids(self) -> list[int]:
        return [p.prog_id for p in self.programs if p.prog_id is not None]

    @property
    def said(self) -> str:
        """Its owner said whole: the trampoline and each program it runs."""
        if self.trampoline is None:
            return f"a direct call to {visible(self.target_name)}, which is no BPF trampoline"
        runs = ", ".join(p.said for p in self.programs)
        return f"BPF trampoline {visible(self.trampoline)} at {self.target:#x} running {runs}"


@dataclass(frozen=True)
class TracepointProbe:
    """One probe registered on a tracepoint (`struct tracepoint_func`), as memory holds it,
    its callback named by bounds (kernel/attribution.py) and its data by what it points at."""

    tracepoint: str
    tracepoint_module: str | None  # None: a core kernel tracepoint
    callback: str  # symbol+off [module], or the memory of no listed module holding it
    callback_module: str | None
    callback_kind: str  # bpf, perf, trace-event, kernel, module, no-module (see probes.py)
    owner: str  # what its data names: the BPF program, the perf event's programs, ...
    prio: int
    address: int  # of the callback
    prog_ids: tuple[int, ...] = ()
    hidden_module: str | None = None  # the hidden module whose memory holds the callback
    hidden_from: tuple[str, ...] = ()  # the views that do not list that module
    event_shown: bool | None = None  # trace-event: tracefs set_event lists it (None: unread)
    unlisted_ids: tuple[int, ...] = ()  # of prog_ids, those bpf(2)'s id list lacks


@dataclass(frozen=True)
class TracingRecords(RecordSet):
    """The tracing surface's records by kind."""

    ftrace_hooks: tuple[FtraceHook, ...] = ()
    kprobes: tuple[Kprobe, ...] = ()
    events: tuple[DynamicEvent, ...] = ()
    ops: tuple[OpsRecord, ...] = ()
    direct_mismatches: tuple[DirectMismatch, ...] = ()
    direct_calls: tuple[DirectCall, ...] = ()
    livepatched: tuple[Livepatched, ...] = ()
    tracepoint_probes: tuple[TracepointProbe, ...] = ()
