"""Exceptions for a direct ftrace call: the callback ftrace's direct-call ops (`call_direct_funcs`)
puts on a function's ftrace site is sanctioned by what the call reaches, never by that
handler's name (which any direct call has, a rootkit's own trampoline's too).

The call is covered only when memory shows a BPF trampoline at its target that the kernel's
BPF symbols and bpf(2) know (surfaces/bpf_trampolines.py), and every program that trampoline
runs is exactly as an approved `[[bpf_program]]` entry declares it: the same match as the ebpf
surface's programs (policy/match.py: type, attach, helpers, loader, pins). Anything else stays
a finding, and the exceptions that declare the function or one of the programs get an
`exception-mismatch` that says what differed.
"""

from __future__ import annotations

from collections.abc import Sequence

from patchguard.findings import Finding
from patchguard.policy.match import differences
from patchguard.policy.rules import Request
from patchguard.surfaces.tracing import symbol_name
from patchguard.surfaces.tracing.records import DirectCall, DirectProgram

DIRECT_HANDLER = "call_direct_funcs"  # ops->func of every direct ops (kernel/trace/ftrace.c)
Verdict = tuple[Request | None, list[tuple[Request, list[str]]]]


def direct_handlers(finding: Finding) -> tuple[list[str], list[str]]:
    """(the direct-call ops' callbacks, every other callback) the finding's hook has."""
    owners = finding.evidence.get("owners")
    callbacks = [o for o in owners if isinstance(o, str)] if isinstance(owners, list) else []
    direct = [cb for cb in callbacks if symbol_name(cb) == DIRECT_HANDLER]
    return direct, [cb for cb in callbacks if cb not in direct]


def the_call(finding: Finding, calls: Sequence[DirectCall]) -> DirectCall | None:
    """The direct call read from memory on the finding's function."""
    ev = finding.evidence
    found = [c for c in calls if (c.function, c.module) == (ev.get("function"), ev.get("module"))]
    return found[0] if found else None


def direct_verdict(call: DirectCall | None, live: Sequence[Request]) -> Verdict:
    """(the exception that covers every program the call's trampoline runs, or None and the
    differences of each exception that declares one of them)."""
    if call is None or not call.known:
        said = "no direct call was read from memory" if call is None else call.said
        return None, [(r, [f"unknown to bpf(2): {said}"]) for r in _declaring(call, live)]
    covering: Request | None = None
    for program in call.programs:
        request, diffs = _program_verdict(program, live)
        if request is None:
            return None, diffs or _undeclared(call, program, live)
        covering = covering or request
    return covering, []


def _program_verdict(program: DirectProgram, live: Sequence[Request]) -> Verdict:
    """The exception whose [[bpf_program]] entry the program matches exactly, else the
    differences of those that declare its name."""
    record = program.record
    if record is None:
        return None, []
    found = []
    for request in live:
        for declared in request.manifest.bpf_programs:
            if declared.name != record.name:
                continue
            diff = differences(record, declared, set(program.pins))
            if not diff:
                return request, []
            found.append((request, [f"{program.said}: {d}" for d in diff]))
    return None, found


def _undeclared(
    call: DirectCall, program: DirectProgram, live: Sequence[Request]
) -> list[tuple[Request, list[str]]]:
    why = f"{program.said}, run by {call.trampoline}, matches no [[bpf_program]] it declares"
    return [(r, [why]) for r in _declaring(call, live)]


def _declaring(call: DirectCall | None, live: Sequence[Request]) -> list[Request]:
    """The exceptions that declare the call's function ([[ftrace]]) or one of its programs."""
    if call is None:
        return []
    names = {p.name for p in call.programs}
    return [
        r
        for r in live
        if any(d.function == call.function for d in r.manifest.ftrace)
        or any(d.name in names for d in r.manifest.bpf_programs)
    ]
