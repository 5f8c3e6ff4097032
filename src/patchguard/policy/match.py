"""Findings against the exceptions in force: a hook that matches an approved manifest exactly
is `allowed (exception #N)` — shown, not hidden; one that differs keeps its findings and gets
one more that says what differed. An expired or revoked exception covers nothing; a program
still running exactly as one declared it is an `exception-lapsed` finding (match_lapsed.py).

A program is tied to its product by what keeps it alive, as the ebpf surface recorded it: the
processes that hold it must be the declared loader (path and sha256), and the bpffs pins of it
and its links must be exactly the declared pins. A program that outlives its loader (loaded and
pinned by bpftool, say) has no process to check: its declared pins are then what matches it."""

from __future__ import annotations

import hashlib
import os
import platform
import stat
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path

from patchguard.findings import Disposition, Finding, Severity
from patchguard.kernel.errors import oserror_reason
from patchguard.policy.manifest import DeclaredBpfProgram
from patchguard.policy.match_hooks import allowed_by
from patchguard.policy.match_lapsed import (
    Declared,
    Lapsed,
    declared_by_name,
    lapsed_finding,
    newest_lapsed,
)
from patchguard.policy.rules import Request
from patchguard.scan import Policy
from patchguard.surfaces.base import AnyState
from patchguard.surfaces.ebpf import NAME as EBPF
from patchguard.surfaces.ebpf import BpfLink, BpfProgram, EbpfRecords
from patchguard.surfaces.tracing.records import DirectCall

# Helpers the verifier may replace with inline code, depending on the kernel's version and the
# map's type (a per-CPU array lookup is inlined since 6.10): a declared one the program's
# instructions no longer call is not a difference. Calling an undeclared one still is.
INLINED = frozenset({"bpf_map_lookup_elem", "bpf_get_smp_processor_id"})


def exe_sha256(path: str) -> str | None:
    """SHA-256 of a loader executable; None if it is not a regular file that can be read (a
    FIFO put at a declared loader path must not hang the scan)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        os.set_blocking(fd, True)
        try:
            return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return None


def _targets(prog: BpfProgram) -> set[str]:
    found = {a.target for a in prog.attachments if a.target}
    return found | ({prog.attach_btf} if prog.attach_btf else set())


def pinned_at(prog: BpfProgram, links: Iterable[BpfLink]) -> set[str]:
    """Every bpffs path that keeps `prog` alive: its own pins and those of its links (the
    ebpf surface's records; `bpftool iter pin` pins the link, `prog load` the program)."""
    ids = {a.link_id for a in prog.attachments if a.link_id is not None}
    return set(prog.pins) | {p for link in links if link.link_id in ids for p in link.pins}


def differences(
    prog: BpfProgram, declared: DeclaredBpfProgram, pins: set[str] | None = None
) -> list[str]:
    """What of the program's declared attributes it does not have exactly; [] is a match.
    `pins`: where it and its links are pinned (pinned_at); None: its own pins only."""
    return (
        _shape_differences(prog, declared)
        + _loader_differences(prog, declared)
        + _pin_differences(set(prog.pins) if pins is None else pins, declared)
    )


def _shape_differences(prog: BpfProgram, declared: DeclaredBpfProgram) -> list[str]:
    out: list[str] = []
    if prog.prog_type != declared.prog_type:
        out.append(f"prog_type {prog.prog_type}, declared {declared.prog_type}")
    if _targets(prog) != set(declared.attach):
        out.append(f"attached to {sorted(_targets(prog))}, declared {sorted(declared.attach)}")
    extra = sorted(set(prog.helpers) - set(declared.helpers))
    missing = sorted(set(declared.helpers) - set(prog.helpers) - INLINED)
    if extra:
        out.append(f"calls helpers not declared: {', '.join(extra)}")
    if missing:
        out.append(f"does not call declared helpers: {', '.join(missing)}")
    if set(prog.kfuncs) != set(declared.kfuncs):
        out.append(f"kfuncs {sorted(prog.kfuncs)}, declared {sorted(declared.kfuncs)}")
    return out


def _loader_differences(prog: BpfProgram, declared: DeclaredBpfProgram) -> list[str]:
    """Every live process that holds the program must be the declared loader; with none
    alive, the declared pins are what keeps it (and what is checked)."""
    loaders = [o for o in prog.owners if o.exe]
    loader = declared.loader
    if loader is None:
        return [f"held by {o.exe} (pid {o.pid}), but no loader is declared" for o in loaders]
    if not loaders and not declared.pins:
        return ["no loader process to check against the declared loader"]
    out: list[str] = []
    for owner in loaders:
        if owner.exe != loader.path:
            out.append(f"loaded by {owner.exe} (pid {owner.pid}), declared {loader.path}")
        elif exe_sha256(f"/proc/{owner.pid}/exe") not in loader.digests:
            out.append(f"loader {owner.exe} (pid {owner.pid}) has another sha256 than declared")
    return out


def _pin_differences(pins: set[str], declared: DeclaredBpfProgram) -> list[str]:
    wanted = set(declared.pins)
    if pins == wanted:
        return []
    if not pins:
        return [f"not pinned, declared pinned at {sorted(wanted)}"]
    if not wanted:
        return [f"pinned at {sorted(pins)}, declared no pins"]
    return [f"pinned at {sorted(pins)}, declared {sorted(wanted)}"]


def in_scope(request: Request, host: str) -> bool:
    return request.scope is None or any(fnmatch(host, s) for s in request.scope)


def apply_exceptions(
    findings: Sequence[Finding],
    records: EbpfRecords,
    exceptions: Sequence[Request],
    host: str | None = None,
    lapsed: Sequence[Lapsed] = (),
) -> list[Finding]:
    """The findings with the ones that a live exception covers marked allowed, plus an
    `exception-mismatch` finding for each program whose name an exception declares but whose
    hook differs from the declaration, an `exception-match` (info, allowed) for each covered
    program that no finding is about (every approved hook in force is shown), and an
    `exception-lapsed` for each uncovered one exactly as a `lapsed` exception declared it."""
    host = host or platform.node()
    live = [r for r in exceptions if in_scope(r, host)]
    ended = declared_by_name(lapse for lapse in lapsed if in_scope(lapse.request, host))
    links = list(records.links)
    allowed: dict[int, tuple[BpfProgram, Request]] = {}
    out: list[Finding] = []
    for prog in records.programs:
        pins = pinned_at(prog, links)
        request, mismatches = _verdict(prog, pins, live)
        if request is not None:
            allowed[prog.prog_id] = (prog, request)
        out += mismatches + _lapsed(prog, pins, ended if request is None else {})
    about = {f.evidence.get("prog_id") for f in findings if f.surface == EBPF}
    out += [_mark(f, allowed) for f in findings]
    out += [_match(p, r) for i, (p, r) in allowed.items() if i not in about]
    return out


def _verdict(
    prog: BpfProgram, pins: set[str], live: Sequence[Request]
) -> tuple[Request | None, list[Finding]]:
    """The exception that covers `prog`, or the mismatches of those that declare its name."""
    declared = [(r, d) for r in live for d in r.manifest.bpf_programs if d.name == prog.name]
    found = [(r, differences(prog, d, pins)) for r, d in declared]
    for request, diff in found:
        if not diff:
            return request, []
    return None, [_mismatch(prog, request, diff) for request, diff in found]


def _lapsed(prog: BpfProgram, pins: set[str], lapsed: Declared) -> list[Finding]:
    lapse = newest_lapsed(prog, pins, lapsed)
    return [] if lapse is None else [lapsed_finding(prog, lapse)]


def _mark(finding: Finding, allowed: dict[int, tuple[BpfProgram, Request]]) -> Finding:
    prog_id = finding.evidence.get("prog_id")
    if finding.surface != EBPF or not isinstance(prog_id, int) or prog_id not in allowed:
        return finding
    return allowed_by(finding, allowed[prog_id][1])


def _match(prog: BpfProgram, request: Request) -> Finding:
    seen = Finding(
        EBPF,
        "exception-match",
        Severity.INFO,
        f"prog {prog.prog_id} ({prog.name}, {prog.prog_type})",
        "the program is exactly as declared",
        evidence={"prog_id": prog.prog_id, "name": prog.name},
    )
    return allowed_by(seen, request)


def _mismatch(prog: BpfProgram, request: Request, diff: list[str]) -> Finding:
    return Finding(
        EBPF,
        "exception-mismatch",
        Severity.HIGH,
        f"prog {prog.prog_id} ({prog.name}, {prog.prog_type})",
        f"exception #{request.id} ({request.vendor}) declares a program named {prog.name}, but "
        f"this one differs: {'; '.join(diff)}",
        Disposition.SUSPICIOUS,
        "T1014",
        {"prog_id": prog.prog_id, "exception": request.id, "differences": diff},
    )


def ledger_policy(path: Path) -> tuple[Policy | None, str | None]:
    """The policy of the exceptions in force in the ledger at `path` (and of those that lapsed,
    for exception-lapsed), or (None, why not): no ledger, or one that does not verify (which
    grants nothing)."""
    try:
        path.stat()
    except FileNotFoundError:
        return None, None
    except OSError as exc:  # not root: /var/lib/patchguard is 0700
        return None, f"cannot read the exception ledger {path}: {oserror_reason(exc)}"
    from patchguard.policy.exceptions import exceptions_at  # only where there is a ledger
    from patchguard.policy.ledger import LedgerError

    try:
        live, lapsed = exceptions_at(path)
    except LedgerError as exc:
        return None, f"the exception ledger grants nothing: {exc}"
    return exceptions_policy(live, lapsed=lapsed), None


def exceptions_policy(live: Sequence[Request], lapsed: Sequence[Lapsed] = ()) -> Policy:
    """The policy that applies exactly the exceptions `live` (the ledger's, or the witnessed
    ones among them: policy/transparency/gate.py), and names the programs still running as
    an exception in `lapsed` declared them (exception-lapsed)."""
    from patchguard.policy.match_hooks import apply_hook_exceptions
    from patchguard.policy.match_taint import apply_taint_exceptions
    from patchguard.surfaces.modules import NAME as MODULES
    from patchguard.surfaces.posture import NAME as POSTURE
    from patchguard.surfaces.tracing import NAME as TRACING

    def policy(findings: list[Finding], state: AnyState) -> list[Finding]:
        if state.surface == EBPF:
            records = state.records
            typed = records if isinstance(records, EbpfRecords) else EbpfRecords.of(records)
            return apply_exceptions(findings, typed, live, lapsed=lapsed)
        if state.surface == TRACING:
            return apply_hook_exceptions(findings, live, direct=_direct_calls(state))
        if state.surface == MODULES:
            return apply_hook_exceptions(findings, live)
        if state.surface == POSTURE:
            return apply_taint_exceptions(findings, live)
        return findings

    return policy


def _direct_calls(state: AnyState) -> tuple[DirectCall, ...]:
    """What the tracing surface read each direct ftrace call to reach."""
    from patchguard.surfaces.tracing import TracingRecords

    records = state.records
    typed = records if isinstance(records, TracingRecords) else TracingRecords.of(records)
    return typed.direct_calls
