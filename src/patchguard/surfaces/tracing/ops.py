"""The ftrace ops list from kernel memory (kernel/ftrace_ops.py) against the text views: tracefs
`enabled_functions`, which prints from those same ops, and each direct ops' own record of where
its function's site calls against the site's bytes.

Memory is the ground truth: a function an enabled ops traces that enabled_functions does not
print is hidden by a filter on what this process reads ("enabled_functions hides N functions
that ftrace ops <handler> traces"); a site calling elsewhere than its direct ops records was
rewritten behind ftrace, and so was a direct ops whose own direct_call (6.6+) leads elsewhere
than direct_functions records. Where enabled_functions cannot be read (EPERM on these VMs) the
ops are still reported, and the comparison is a gap.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from patchguard.findings import Disposition, Finding
from patchguard.kernel.attribution import Attributor
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_ops import (
    FtraceOps,
    direct_functions,
    layout,
    list_head,
    ops_direct_call,
    read_ops,
)
from patchguard.kernel.ftrace_records import site_function
from patchguard.kernel.memory import KernelMemory
from patchguard.kernel.page_cache import PageCache
from patchguard.kernel.proc_modules import function_name
from patchguard.surfaces.base import finding
from patchguard.surfaces.reading import Reading, records_of
from patchguard.surfaces.tracing.paths import NAME
from patchguard.surfaces.tracing.records import (
    DirectMismatch,
    FtraceHook,
    OpsRecord,
    TracingRecords,
)
from patchguard.text import visible
from patchguard.x86 import insn as x86

SHOWN = 12  # function names a record or finding lists
SETTLE = 0.05  # seconds before a site that disagrees with its ops is read again


@dataclass(frozen=True)
class NamedOps:
    ops: FtraceOps
    handler: tuple[str, str | None]  # ops->func: (function, module)
    functions: dict[int, str]  # ip -> function name, as enabled_functions prints it (%ps)


def collect_ops(r: Reading) -> None:
    """Append an OpsRecord per enabled ops (and DirectMismatch records) to `r.records`; the
    enabled_functions records must already be there when it was read."""
    kernel = r.kernel
    try:
        memory = kernel.memory()
        # the ops and their hashes, ~1,200 words in few pages, read a page at a time; a site
        # that disagrees is read again afresh (direct_mismatches), never from these pages
        pages = PageCache(memory)
        head, _ = list_head(kernel, pages)
        ops = [o for o in read_ops(pages, head, layout(kernel.vmlinux_btf)) if o.enabled]
    except KernelAccessError as exc:
        r.gap("ftrace ops (ftrace_ops_list in kernel memory)", str(exc))
        return
    names = kernel.attributor()
    # a traced ip is a function's ftrace site: after its ENDBR64 under IBT, named as
    # enabled_functions names it (the function), not as vfs_read+0x4
    named = [
        NamedOps(
            o, function_name(o.func, names), {ip: site_function(names, ip)[0] for ip in o.traced}
        )
        for o in ops
    ]
    shown = _shown(r)
    r.records.extend(ops_record(n, shown) for n in named)
    try:
        current = direct_functions(kernel, pages, layout(kernel.vmlinux_btf))
    except KernelAccessError as exc:
        r.gap("ftrace direct calls (direct_functions in kernel memory)", str(exc))
        return
    r.records.extend(direct_mismatches(memory, named, current))
    r.records.extend(direct_call_mismatches(r, memory, named, current))
    _collect_direct(r, memory, current)


def _collect_direct(r: Reading, memory: KernelMemory, current: dict[int, int]) -> None:
    """What each direct call reaches (surfaces/bpf_trampolines.py): its owner is the BPF
    trampoline and programs there, never ftrace's direct-call ops (call_direct_funcs) alone."""
    if not any(current.values()):
        return
    from patchguard.surfaces.bpf_trampolines import direct_calls

    try:
        r.records.extend(direct_calls(r.kernel, memory, current))
    except KernelAccessError as exc:
        r.gap("what ftrace's direct calls reach (BPF trampolines in kernel memory)", str(exc))


def _shown(r: Reading) -> frozenset[str] | None:
    """The functions enabled_functions printed; None where it was not read."""
    if any("enabled_functions" in gap.what for gap in r.gaps):
        r.gap(
            "ftrace ops against enabled_functions",
            "enabled_functions was not read: the ops in memory are reported, not compared",
        )
        return None
    return frozenset(h.function for h in records_of(r.records, FtraceHook))


def ops_record(n: NamedOps, shown: frozenset[str] | None) -> OpsRecord:
    functions = sorted(set(n.functions.values()))
    hidden = [f for f in functions if shown is not None and f not in shown]
    return OpsRecord(
        *n.handler,
        n.ops.flag_names,
        len(n.ops.traced),
        n.ops.all_functions,
        tuple(functions[:SHOWN]),
        tuple(hidden[:SHOWN]),
        len(hidden),
    )


def direct_mismatches(
    memory: KernelMemory, named: Sequence[NamedOps], current: dict[int, int]
) -> list[DirectMismatch]:
    """The sites of a direct ops that do not call the target ftrace's direct_functions has
    for them (`current`). A function more than one ops traces goes through ftrace's list
    function, not the direct target."""
    if any(n.ops.all_functions for n in named):
        return []
    users = Counter(ip for n in named for ip in n.ops.traced)
    found = []
    for n in named:
        for ip, registered in n.ops.traced.items():
            direct = current.get(ip, registered)
            if not direct or users[ip] > 1:
                continue
            if (seen := _disagrees(memory, ip, direct)) is not None:
                code, calls = seen
                found.append(DirectMismatch(n.functions[ip], n.handler[0], direct, calls, code))
    return found


def _disagrees(memory: KernelMemory, ip: int, direct: int) -> tuple[str, int | None] | None:
    """(site code, its call target) when the site does not call `direct`, read twice (the
    kernel may be moving the site to a new trampoline); None when it agrees."""
    for attempt in range(2):
        try:
            code = memory.read(ip, 5)
        except KernelAccessError:
            return None
        hop = x86.branch(code, ip)
        if hop is not None and hop.dest == direct:
            return None
        if attempt == 0:
            time.sleep(SETTLE)
    calls = hop.dest if hop is not None and hop.kind == "call" else None
    return code.hex(" "), calls


def direct_call_mismatches(
    r: Reading, memory: KernelMemory, named: Sequence[NamedOps], current: dict[int, int]
) -> list[DirectMismatch]:
    """The functions whose direct ops holds a direct_call other than the target ftrace's
    direct_functions records for them. call_direct_funcs follows direct_call wherever another
    ftrace user shares the site, so those calls go where the bookkeeping does not say. Read
    again after a moment (modify_ftrace_direct updates the hash, then the field) and from
    memory, not from the pages the ops were read through."""
    calls = {n.ops.address: n.ops.direct_call for n in named}
    if not direct_call_disagreements(named, current, calls):
        return []
    time.sleep(SETTLE)
    try:
        at = layout(r.kernel.vmlinux_btf)
        fresh = direct_functions(r.kernel, memory, at)
        calls = {n.ops.address: ops_direct_call(memory, n.ops.address, n.ops.flags, at)
                 for n in named}  # fmt: skip
    except KernelAccessError as exc:
        r.gap("ftrace direct calls read again (direct_functions in kernel memory)", str(exc))
        return []
    names = r.kernel.attributor()
    return [_named_call(m, names) for m in direct_call_disagreements(named, fresh, calls)]


def direct_call_disagreements(
    named: Sequence[NamedOps], current: dict[int, int], calls: dict[int, int | None]
) -> list[DirectMismatch]:
    found = []
    for n in named:
        target = calls.get(n.ops.address)
        for ip in n.ops.traced if target is not None else ():
            recorded = current.get(ip)
            if recorded is not None and recorded != target:
                found.append(DirectMismatch(n.functions[ip], n.handler[0], recorded, target, "",
                                            "direct_call"))  # fmt: skip
    return found


def _named_call(m: DirectMismatch, names: Attributor) -> DirectMismatch:
    return replace(m, calls_name=names.name(m.calls) if m.calls else None)


def ops_findings(records: TracingRecords) -> list[Finding]:
    found = [_hidden(o) for o in records.ops if o.hidden_count]
    return found + [_mismatch(m) for m in records.direct_mismatches]


def _hidden(o: OpsRecord) -> Finding:
    handler = visible(o.handler)
    return finding(
        NAME,
        "filtered-view",
        "enabled_functions",
        f"enabled_functions hides {o.hidden_count} function{'s' if o.hidden_count > 1 else ''} "
        f"that ftrace ops {handler} "
        f"traces ({', '.join(visible(f) for f in o.hidden)}): kernel memory's ftrace_ops_list "
        "holds them, the text as this process reads it does not",
        {
            "handler": handler,
            "handler_module": o.handler_module,
            "flags": list(o.flags),
            "ops_functions": o.functions,
            "hidden": o.hidden_count,
            "hidden_functions": [visible(f) for f in o.hidden],
        },
        disposition=Disposition.TAMPERING,
    )


def _mismatch(m: DirectMismatch) -> Finding:
    if m.via == "direct_call":
        return _direct_call_mismatch(m)
    calls = f"calls {m.calls:#x}" if m.calls is not None else f"holds {m.code}"
    return finding(
        NAME,
        "ftrace-direct-mismatch",
        visible(m.function),
        f"ftrace's own direct_functions records that the ftrace site of "
        f"{visible(m.function)} (ops {visible(m.handler)}) calls {m.recorded:#x}, but the "
        f"site {calls}: the site was changed behind ftrace's bookkeeping",
        {
            "function": visible(m.function),
            "recorded_direct": f"{m.recorded:#x}",
            "site_calls": f"{m.calls:#x}" if m.calls is not None else None,
            "code": m.code,
        },
        disposition=Disposition.TAMPERING,
    )


def _direct_call_mismatch(m: DirectMismatch) -> Finding:
    target = f"{m.calls:#x}" if m.calls is not None else "?"
    reaches = f" ({visible(m.calls_name)})" if m.calls_name else ""
    return finding(
        NAME,
        "ftrace-direct-mismatch",
        visible(m.function),
        f"ftrace's own direct_functions records that {visible(m.function)}'s direct call goes "
        f"to {m.recorded:#x}, but its direct ops ({visible(m.handler)}) holds direct_call "
        f"{target}{reaches}: call_direct_funcs follows direct_call wherever another ftrace user "
        "shares the site, so those calls go where ftrace's bookkeeping does not say",
        {
            "function": visible(m.function),
            "recorded_direct": f"{m.recorded:#x}",
            "ops_direct_call": target,
            "ops_direct_call_reaches": visible(m.calls_name) if m.calls_name else None,
        },
        disposition=Disposition.TAMPERING,
    )
