"""Tracepoint probes from kernel memory: every probe registered on every tracepoint (core and
module, kernel/tracepoint_list.py), its callback named by bounds and its data by what it
points at, against the one text view that lists them, tracefs `set_event`.

A probe's callback is named only by a symbol whose extent holds it (kernel/attribution.py):
BPF's `__bpf_trace_<class>` glue (a raw tracepoint: the program is named from its link),
perf's `perf_trace_<class>` (with the BPF programs of its perf events), trace events'
`trace_event_raw_event_<class>`, any other kernel function, a listed module's function. A
callback no kernel or listed module symbol covers runs from memory of no listed module: code
loaded by a module that took itself off the lists, or copied to an allocation no module owns.
That is the finding, with the allocation and the hidden module where memory names one.

`set_event` (one per tracefs instance) lists the trace events that are on; each is a
`trace_event_raw_event_*` probe (`ftrace_syscall_*` for the syscalls events) on its
tracepoint. A probe of that kind whose tracepoint no `set_event` lists, read twice, means the
text as this process reads it hides it. `available_events` lists events that exist, not
which are on, so it is no view of the probes; perf events and BPF raw tracepoints have no
text view to compare (bpf(2) lists BPF links; the ebpf surface reads them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from patchguard.findings import Disposition, Finding
from patchguard.kernel.attribution import Attribution, Attributor
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KernelMemory
from patchguard.kernel.module_layout import MODULE_NAME_LEN, plausible_name
from patchguard.kernel.module_symbols import layout as module_layout
from patchguard.kernel.module_symbols import modules_head, walk_modules
from patchguard.kernel.tracepoint_list import (
    core_tracepoints,
    iterator_names,
    module_offsets,
    module_tracepoints,
)
from patchguard.kernel.tracepoint_owners import (
    OwnerLayout,
    owner_layout,
    perf_progs,
    raw_tracepoint_prog,
)
from patchguard.kernel.tracepoints import (
    ITERATOR_PREFIX,
    Layout,
    Probe,
    Tracepoint,
    TracepointReader,
    layout,
    tracepoint_of_event,
)
from patchguard.surfaces.base import finding
from patchguard.surfaces.reading import Reading
from patchguard.surfaces.tracing.paths import NAME
from patchguard.surfaces.tracing.records import TracepointProbe, TracingRecords
from patchguard.text import visible

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

WHAT = "tracepoint probes (struct tracepoint.funcs in kernel memory)"
# Callback symbol prefixes -> the kind of probe they are (the kernel's own users).
KINDS = (
    (("__bpf_trace_", "bpf_trace_run"), "bpf"),
    (("perf_trace_", "perf_syscall_"), "perf"),
    (("trace_event_raw_event_", "ftrace_syscall_"), "trace-event"),
)
EVENT_KIND = "trace-event"
NO_MODULE = "no-module"
MAX_SET_EVENT = 1 << 20  # bytes of one set_event read
MAX_INSTANCES = 256


@dataclass(frozen=True)
class Read:
    """Every tracepoint memory holds: (owning module or None, tracepoint)."""

    tracepoints: tuple[tuple[str | None, Tracepoint], ...]
    modules: frozenset[str]  # the names on the kernel's module list in memory
    reader: TracepointReader


def collect_probes(r: Reading, tracefs: str | None) -> None:
    """Append a TracepointProbe per probe on any tracepoint; a gap where memory is unread."""
    kernel = r.kernel
    try:
        memory, lay = kernel.memory(), layout(kernel.vmlinux_btf)
        if lay is None:
            raise KernelAccessError("vmlinux BTF", "no struct tracepoint")
        read = _read_all(r, memory, lay)
    except KernelAccessError as exc:
        r.gap(WHAT, str(exc))
        return
    namer = _Namer(kernel, memory, owner_layout(kernel.vmlinux_btf), read.modules)
    probes = [namer.probe(m, tp, p) for m, tp in read.tracepoints for p in tp.entries]
    probes = _against_bpf_ids(r, probes, read)
    r.records.extend(against_set_event(r, tracefs, probes, read))


def _read_all(r: Reading, memory: KernelMemory, lay: Layout) -> Read:
    symbols = r.kernel.kallsyms
    core = symbols.core_text_with_prefix(ITERATOR_PREFIX).items()
    found: list[tuple[str | None, Tracepoint]] = [
        (None, tp) for tp in core_tracepoints(memory, lay, iterator_names(core))
    ]
    if not found:
        raise KernelAccessError("tracepoints", f"no __traceiter_ of {len(core)} leads to one")
    names = _module_tracepoints(r, memory, lay, found)
    return Read(tuple(found), names, TracepointReader(memory, lay, {}))


def _module_tracepoints(
    r: Reading, memory: KernelMemory, lay: Layout, found: list[tuple[str | None, Tracepoint]]
) -> frozenset[str]:
    """Add each module's tracepoints (from its struct module) to `found`; return the names on
    the module list. None of it on a kernel without modules."""
    kernel = r.kernel
    at = module_offsets(kernel.vmlinux_btf)
    if at is None or not _loader(kernel):
        return frozenset()
    try:
        mod = module_layout(kernel.vmlinux_btf)
        modules = walk_modules(memory, modules_head(kernel, memory, mod)[0], mod)
    except KernelAccessError as exc:
        r.gap("tracepoints of modules (the module list in memory)", str(exc))
        return frozenset()
    names = []
    for module in modules:
        name = plausible_name(memory.read(module + mod.name, MODULE_NAME_LEN)) or hex(module)
        names.append(name)
        with contextlib.suppress(KernelAccessError):
            found.extend((name, tp) for tp in module_tracepoints(memory, lay, at, module))
    return frozenset(names)


def _loader(kernel: Kernel) -> bool:
    """Whether modules can be loaded (else struct module is only in BTF): /proc/modules is
    there. Where a rootkit removed it the modules surface says so; asking kallsyms for a
    loader function instead costs a search of all of it when the name is absent."""
    return kernel.path("/proc/modules").exists()


def kind_of(attribution: Attribution) -> str:
    """bpf, perf, trace-event (the kernel's own users, by their callback), kernel, module, or
    no-module (no kernel or listed module symbol covers it)."""
    loc = attribution.location
    if loc is None:
        return NO_MODULE
    for prefixes, kind in KINDS:
        if not loc.symbol.module and loc.symbol.name.startswith(prefixes):
            return kind
    return "module" if loc.symbol.module else "kernel"


class _Namer:
    def __init__(
        self,
        kernel: Kernel,
        memory: KernelMemory,
        owners: OwnerLayout | None,
        modules: frozenset[str],
    ) -> None:
        self.kernel, self.memory, self.owners, self.modules = kernel, memory, owners, modules
        self.names: Attributor = kernel.attributor()

    def probe(self, module: str | None, tp: Tracepoint, p: Probe) -> TracepointProbe:
        where = self.names.attribute(p.func)
        kind = kind_of(where)
        owner, ids = self._owner(kind, p.data)
        loc = where.location
        callback_module = loc.symbol.module if loc else where.hidden_module
        named = TracepointProbe(
            tp.name, module, str(where), callback_module, kind, owner, p.prio, p.func, ids
        )
        if where.hidden_module is None:
            return named
        hidden = where.hidden_module
        return replace(named, hidden_module=hidden, hidden_from=self._hiding(hidden))

    def _owner(self, kind: str, data: int) -> tuple[str, tuple[int, ...]]:
        if self.owners is None or kind not in ("bpf", "perf"):
            return ("trace event (tracefs)" if kind == EVENT_KIND else ""), ()
        if kind == "bpf":
            prog = raw_tracepoint_prog(self.memory, self.owners, data)
            return (str(prog), (prog.prog_id,)) if prog else ("a BPF program memory hides", ())
        progs = perf_progs(self.memory, self.owners, data)
        said = "perf events" + (" running " + ", ".join(map(str, progs)) if progs else "")
        return said, tuple(p.prog_id for p in progs)

    def _hiding(self, module: str) -> tuple[str, ...]:
        """The views that do not list a module whose memory holds a callback: /proc/modules
        (attribution names only modules it lists), the kernel's own list, /sys/module."""
        views = ["/proc/modules"]
        if module not in self.modules:
            views.append("the kernel's module list")
        if not self.kernel.path(f"/sys/module/{module}").exists():
            views.append("/sys/module")
        return tuple(views)


# --- bpf(2)'s program ids -----------------------------------------------------------------------


def _against_bpf_ids(
    r: Reading, probes: list[TracepointProbe], read: Read
) -> list[TracepointProbe]:
    """The probes, each marked with the ids of its programs bpf(2) does not list: listed
    after memory was read, and again (with the probe's tracepoint) for an id it lacks, so a
    program loaded or freed in between is no lie."""
    ids = {i for p in probes for i in p.prog_ids}
    if not ids:
        return probes
    try:
        unlisted = ids - _listed_ids()
        if unlisted:
            unlisted -= _listed_ids()
    except bpf.BpfError as exc:
        r.gap("BPF programs of tracepoint probes against bpf(2)'s ids", str(exc))
        return probes
    unlisted = {i for i in unlisted if _still_running(read, probes, i)}
    return [_unlisted(p, unlisted) for p in probes]


def _listed_ids() -> set[int]:
    return set(bpf.next_ids(bpf.BPF_PROG_GET_NEXT_ID, "PROG_GET_NEXT_ID"))


def _still_running(read: Read, probes: list[TracepointProbe], prog_id: int) -> bool:
    """Whether a probe running program `prog_id` is still on its tracepoint."""
    held = [p for p in probes if prog_id in p.prog_ids]
    return any(_still_probed(read, p.tracepoint, p.address) for p in held)


def _unlisted(p: TracepointProbe, unlisted: set[int]) -> TracepointProbe:
    missing = tuple(i for i in p.prog_ids if i in unlisted)
    return replace(p, unlisted_ids=missing) if missing else p


# --- set_event ----------------------------------------------------------------------------------


def against_set_event(
    r: Reading, tracefs: str | None, probes: list[TracepointProbe], read: Read
) -> list[TracepointProbe]:
    """The probes, each trace-event probe marked with whether a set_event lists its event."""
    if not any(p.callback_kind == EVENT_KIND for p in probes):
        return probes
    shown = _shown_events(r, tracefs)
    if shown is None:
        return probes
    missing = {
        p.tracepoint for p in probes if p.callback_kind == EVENT_KIND and p.tracepoint not in shown
    }
    if missing:  # read both again: an event switched off between the two reads is no lie
        shown |= _shown_events(r, tracefs) or frozenset()
        missing = {n for n in missing if n not in shown and _still_probed(read, n)}
    return [
        replace(p, event_shown=p.tracepoint not in missing) if p.callback_kind == EVENT_KIND else p
        for p in probes
    ]


def _still_probed(read: Read, name: str, func: int | None = None) -> bool:
    """Whether tracepoint `name` still holds a probe (calling `func`, where given)."""
    for _, tp in read.tracepoints:
        if tp.name == name:
            again = read.reader.named_at(tp.address)
            probes = again.probes if again is not None else ()
            return func in probes if func is not None else bool(probes)
    return False


def _shown_events(r: Reading, tracefs: str | None) -> frozenset[str] | None:
    """The tracepoints of the events every set_event lists; None where it cannot be read."""
    if tracefs is None:
        return None
    paths = [f"{tracefs}/set_event", *_instances(r, tracefs)]
    texts = [r.text("tracefs set_event", p) for p in paths]
    if texts[0] is None:
        return None
    lines = (line.strip() for t in texts if t for line in t[:MAX_SET_EVENT].splitlines())
    return frozenset(tracepoint_of_event(line) for line in lines if line)


def _instances(r: Reading, tracefs: str) -> list[str]:
    try:
        names = sorted(p.name for p in r.kernel.path(f"{tracefs}/instances").iterdir())
    except OSError:
        return []
    return [f"{tracefs}/instances/{n}/set_event" for n in names[:MAX_INSTANCES]]


# --- assess -------------------------------------------------------------------------------------


def probe_findings(records: TracingRecords) -> list[Finding]:
    probes = records.tracepoint_probes
    found = [_unowned(p) for p in probes if p.callback_kind == NO_MODULE]
    found += [_hidden_bpf(p) for p in probes if p.unlisted_ids]
    return found + [_set_event_hides(p) for p in probes if p.event_shown is False]


def _subject(p: TracepointProbe) -> str:
    return f"tracepoint {visible(p.tracepoint)}" + (
        f" [{visible(p.tracepoint_module)}]" if p.tracepoint_module else ""
    )


def _evidence(p: TracepointProbe) -> dict[str, str | int | list[str] | None]:
    return {
        "tracepoint": visible(p.tracepoint),
        "tracepoint_module": visible(p.tracepoint_module) if p.tracepoint_module else None,
        "callback": visible(p.callback),
        "callback_address": f"{p.address:#x}",
        "callback_kind": p.callback_kind,
        "prio": p.prio,
        "hidden_module": visible(p.hidden_module) if p.hidden_module else None,
        "hidden_from": list(p.hidden_from),
    }


def _unowned(p: TracepointProbe) -> Finding:
    module = visible(p.hidden_module) if p.hidden_module else None
    whose = (
        f"the memory of module {module}, which {_listed(p.hidden_from)} do not list"
        if module
        else "memory no kernel or listed module symbol covers"
    )
    return finding(
        NAME,
        "tracepoint-probe-unowned-code",
        _subject(p),
        f"A probe on {_subject(p)} runs code in {whose}: {visible(p.callback)}. Every "
        "legitimate probe is a kernel or listed module function; this one was registered by "
        "code that hides where it lives.",
        _evidence(p),
        disposition=Disposition.TAMPERING,
    )


def _hidden_bpf(p: TracepointProbe) -> Finding:
    ids = ", ".join(map(str, p.unlisted_ids))
    return finding(
        NAME,
        "tracepoint-probe-hidden-bpf",
        _subject(p),
        f"A probe on {_subject(p)} runs {visible(p.owner)}, read from kernel memory, and "
        f"bpf(2)'s program ids, listed twice, lack {ids}: the bpf(2) view as this process "
        "sees it hides a program that runs",
        {**_evidence(p), "owner": visible(p.owner), "unlisted_ids": list(p.unlisted_ids)},
        disposition=Disposition.TAMPERING,
    )


def _listed(views: tuple[str, ...]) -> str:
    return " and ".join([", ".join(views[:-1]), views[-1]] if len(views) > 1 else views)


def _set_event_hides(p: TracepointProbe) -> Finding:
    return finding(
        NAME,
        "filtered-view",
        "set_event",
        f"tracefs set_event hides the trace event on {_subject(p)}: kernel memory holds its "
        f"probe ({visible(p.callback)}) in the tracepoint's funcs, read twice, and no "
        "set_event as this process reads it lists the event",
        _evidence(p),
        disposition=Disposition.TAMPERING,
    )


def probe_counts(records: TracingRecords) -> dict[str, int]:
    probes = records.tracepoint_probes
    return {
        "tracepoint_probes": len(probes),
        "probed_tracepoints": len({(p.tracepoint_module, p.tracepoint) for p in probes}),
    }
