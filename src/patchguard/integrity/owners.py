"""Who may legitimately patch kernel code right now, as the kernel shows it: BPF tracing links,
ftrace ops (enabled_functions), livepatches (/sys/kernel/livepatch) and kprobes. `check`
explains a changed ftrace, kprobe or ftrace_caller site only by an owner read here.

Not an owner: an IPMODIFY ftrace ops whose handler lives in a module and is not a livepatch.
Redirecting a function's execution from a module is the method of ftrace rootkits, so such a
hook is reported (`ipmodify_hooks`), never used to explain a change."""

from __future__ import annotations

from dataclasses import dataclass, field

from patchguard.findings import Gap
from patchguard.kernel import Kernel
from patchguard.kernel.livepatch import read_livepatches
from patchguard.kernel.tracepoints import tracepoint_of_event
from patchguard.surfaces.ebpf import Attachment, BpfProgram, EbpfSurface, Owner
from patchguard.surfaces.ftrace_sites import trampolines
from patchguard.surfaces.tracing import FtraceHook, Kprobe, TracingSurface
from patchguard.surfaces.tracing.records import DirectCall

FTRACE_CALL_LABELS = ("ftrace_call", "ftrace_regs_call")  # inside ftrace_(regs_)caller
FTRACE_DISPATCH = ("ftrace_stub", "arch_ftrace_ops_list_func", "ftrace_ops_list_func")
KLP_HANDLER = "klp_ftrace_handler"
KPROBE_FTRACE_HANDLER = "kprobe_ftrace_handler"
DIRECT_HANDLER = "call_direct_funcs"  # ops->func of ftrace's direct-call ops


@dataclass(frozen=True)
class Owners:
    ftrace: dict[int, str]  # function address -> owner
    trampolines: frozenset[int]  # ftrace_caller, ftrace/BPF trampolines
    kprobes: dict[int, str]  # probed address -> owner (INT3 or optimized-kprobe sites)
    callers: dict[int, dict[int, str]] = field(default_factory=dict)  # see SiteIndex
    ipmodify_hooks: dict[int, str] = field(default_factory=dict)  # function -> module handler
    # tracepoint name -> the BPF programs attached to it, each said whole
    tracepoint_users: dict[str, list[str]] = field(default_factory=dict)
    # function address -> the BPF trampoline its ftrace site must call: a direct call with no
    # other callback on the function (ftrace then calls the trampoline itself)
    direct: dict[int, int] = field(default_factory=dict)


def livepatched(kernel: Kernel) -> dict[str, str]:
    """Function name -> "livepatch NAME (object/function,sympos)" for enabled livepatches."""

    return {p.function: str(p) for p in read_livepatches(kernel)}


def _handler_symbol(owner: str) -> tuple[str, str | None]:
    """("pg_cb", "pg_mod") from a %pS owner such as "pg_cb+0x0/0x17 [pg_mod]"."""
    name = owner.split("+")[0].strip()
    module = owner.split("[", 1)[1].rstrip("]").strip() if "[" in owner else None
    return name, module


def current_owners(kernel: Kernel) -> tuple[Owners, list[Gap]]:
    """Read the owners from the ebpf and tracing surfaces (their gaps come along: an owner
    that cannot be seen cannot explain anything)."""

    syms = kernel.kallsyms
    ebpf, tracing = EbpfSurface().collect(kernel), TracingSurface().collect(kernel)
    owners = Owners({}, trampolines(kernel.kallsyms), {})
    dispatch = {a: n for n in FTRACE_DISPATCH if (a := syms.address_of(n)) is not None}
    for prog in ebpf.records.programs:
        _add_tracepoint_user(owners, prog)
    links: dict[int, list[str]] = {}  # function -> its tracing links, said with their holders
    for link in ebpf.records.links:
        if link.link_type == "tracing" and link.target:
            address = syms.address_of(link.target.split(" [")[0])
            if address is not None:
                holders = ", ".join(f"pid {o.pid} {o.exe or o.comm}" for o in link.owners)
                who = holders or ", ".join(link.pins) or "no process or pin"
                owners.ftrace[address] = f"BPF link {link.link_id} (prog {link.prog_id}; {who})"
                links.setdefault(address, []).append(owners.ftrace[address])
    patched = livepatched(kernel)
    probes = [r for r in tracing.records.kprobes if r.active]
    on_ftrace = {(r.symbol, r.module): kprobe_said(r) for r in probes if "FTRACE" in r.flags}
    for hook in tracing.records.ftrace_hooks:
        _add_hook(kernel, owners, dispatch, patched, hook)
        if (said := on_ftrace.get((hook.function, hook.module))) is not None:
            _kprobe_behind(owners, kernel, hook, said)
    for call in tracing.records.direct_calls:
        _direct_owner(kernel, owners, call, links)
    for probe in probes:
        if probe.address and "FTRACE" not in probe.flags:
            # an [FTRACE] kprobe uses the function's ftrace site, owned through ftrace
            owners.kprobes[probe.address] = kprobe_said(probe)
    _kprobes_behind(dispatch, [r for r in probes if "FTRACE" in r.flags])
    for label in FTRACE_CALL_LABELS:
        if (address := syms.address_of(label)) is not None:
            owners.callers[address] = dispatch
    return owners, [*ebpf.gaps, *tracing.gaps]


def _direct_owner(
    kernel: Kernel, owners: Owners, call: DirectCall, links: dict[int, list[str]]
) -> None:
    """A function's ftrace site owned through ftrace's direct-call ops is owned by what the
    direct call reaches: the BPF trampoline there and every program it runs (not
    call_direct_funcs, nor one of its links alone), and through which links, held by whom. A
    direct call to anything else, or to a trampoline whose programs bpf(2) does not list, owns
    nothing: the change stays unexplained."""
    address = kernel.kallsyms.address_of(call.function, call.module)
    if address is None:
        return
    if not call.known:
        owners.ftrace.pop(address, None)
        return
    said = "; ".join([call.said, *links.get(address, [])])
    others = owners.ftrace.get(address, "")
    if others.startswith("ftrace ops") and _not_direct(others):
        owners.ftrace[address] = f"{said}; beside it {others}"
        return
    owners.ftrace[address] = said
    owners.direct[address] = call.target


def _not_direct(owner: str) -> bool:
    """An ftrace ops owner naming a handler other than the direct-call ops'."""
    handlers = owner.removeprefix("ftrace ops (").removesuffix(")").split(", ")
    return any(not h.startswith(DIRECT_HANDLER) for h in handlers)


def _kprobe_behind(owners: Owners, kernel: Kernel, hook: FtraceHook, said: str) -> None:
    """A function's ftrace site owned by kprobes' ftrace ops says the kprobe behind it (who
    registered it), not kprobe_ftrace_handler alone."""
    address = kernel.kallsyms.address_of(hook.function, hook.module)
    owner = owners.ftrace.get(address) if address is not None else None
    if address is not None and owner is not None and KPROBE_FTRACE_HANDLER in owner:
        owners.ftrace[address] = f"ftrace ops of the {said}"


def _kprobes_behind(dispatch: dict[int, str], on_ftrace: list[Kprobe]) -> None:
    """ftrace_call calling kprobe_ftrace_handler (kprobes are ftrace's one user) says whose
    kprobes those are."""
    by = sorted({p.handler_module or "the core kernel" for p in on_ftrace if p.handler})
    for address, name in dispatch.items():
        if name == KPROBE_FTRACE_HANDLER and on_ftrace:
            who = f", registered by {', '.join(by)}" if by else ""
            dispatch[address] = f"{name} (for {len(on_ftrace)} kprobes on ftrace{who})"


def kprobe_said(probe: Kprobe) -> str:
    """The kprobe said as "kprobe on TARGET registered by HANDLER [MODULE]", from the kernel's
    kprobe_table (surfaces/tracing), where it could be read."""
    said = f"{probe.probe_type} on {probe.target or probe.symbol or hex(probe.address or 0)}"
    if probe.handler is None:
        return said
    module = f" [{probe.handler_module}]" if probe.handler_module else ""
    return f"{said} registered by {probe.handler}{module}"


def _holders(owners: tuple[Owner, ...], pins: tuple[str, ...]) -> str:
    held = [f"pid {o.pid} {o.exe or o.comm}" for o in owners]
    return ", ".join(dict.fromkeys(held)) or ", ".join(pins) or "no process or pin"


def _tracepoint(attachment: Attachment) -> str | None:
    """The tracepoint an attachment runs on: `tracepoint:EVENT` (perf event or perf_event
    link) and `raw_tracepoint:NAME` (link)."""
    kind, _, name = (attachment.target or "").partition(":")
    if kind == "tracepoint" and name:
        return tracepoint_of_event(name)
    return name if kind == "raw_tracepoint" and name else None


def _add_tracepoint_user(owners: Owners, prog: BpfProgram) -> None:
    for attachment in prog.attachments:
        name = _tracepoint(attachment)
        if name is None:
            continue
        via = f"link {attachment.link_id}" if attachment.link_id else "perf event"
        who = (
            f"BPF prog {prog.prog_id} {prog.name or 'unnamed'} "
            f"({attachment.target} via {via}; {_holders(prog.owners, prog.pins)})"
        )
        owners.tracepoint_users.setdefault(name, []).append(who)


def _add_hook(
    kernel: Kernel,
    owners: Owners,
    dispatch: dict[int, str],
    patched: dict[str, str],
    hook: FtraceHook,
) -> None:
    address = kernel.kallsyms.address_of(hook.function, hook.module)
    if address is None:
        return
    handlers = [c.owner or c.address for c in hook.callbacks]
    for handler in handlers:  # with one user, ftrace_call calls that ops' function itself
        name, module = _handler_symbol(handler)
        if (func := kernel.kallsyms.address_of(name, module)) is not None:
            dispatch.setdefault(func, name + (f" [{module}]" if module else ""))
    if hook.function in patched and any(KLP_HANDLER in h for h in handlers):
        owners.ftrace[address] = patched[hook.function]
        return
    from_module = [h for h in handlers if "[" in h and KLP_HANDLER not in h]
    if hook.ipmodify and from_module:
        owners.ipmodify_hooks[address] = from_module[0]
        return
    owners.ftrace.setdefault(
        address, f"ftrace ops ({', '.join(handlers) or hook.direct or 'enabled_functions'})"
    )
