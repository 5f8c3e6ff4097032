"""Exceptions that lapsed while their programs still run: `exception-lapsed` (low).

An exception that was approved and is no longer in force (its expiry date passed, whether or
not the ledger records the `expire` entry yet, or it was revoked) covers nothing. For a hook
that scan calls a finding without any exception (a kprobe, an ftrace callback, a module, a
sensitive BPF program) that is enough: the finding comes back. A read-only or harmless BPF
program (a scheduler tracepoint observer, a cgroup firewall) is no finding by itself, so past
the expiry nothing would say that its sanction ended while it runs on. This names it: for each
loaded program exactly as a lapsed exception in scope for the host declared it (the same
`differences()` as a live one, pins and loader included) and that no live exception covers,
one finding naming the exception, how and when it lapsed, and the program.

A program that differs from the lapsed declaration gets nothing new: the lapsed exception
never covered that program, and scan's own findings of it stand. Where several lapsed
exceptions match, the one that lapsed last is named (then the highest number): the sanction
the program most recently had."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from patchguard.findings import Disposition, Finding, Severity
from patchguard.policy.chain import Entry
from patchguard.policy.manifest import DeclaredBpfProgram
from patchguard.policy.rules import Request
from patchguard.surfaces.ebpf import NAME as EBPF
from patchguard.surfaces.ebpf import BpfProgram
from patchguard.text import visible


@dataclass(frozen=True)
class Lapsed:
    """An approved exception no longer in force, and how and when it ended."""

    request: Request
    how: str  # "expired" or "revoked"
    at: datetime  # expired: 00:00 UTC of its expiry date; revoked: the revoke entry's time
    reason: str | None = None  # the revocation's reason (None for an expiry)

    @property
    def when_text(self) -> str:
        """The date of an expiry; the time (UTC, seconds) of a revocation."""
        if self.how == "expired":
            return self.request.expires.isoformat()
        return self.at.isoformat(timespec="seconds")


def revocation_times(entries: Iterable[Entry]) -> dict[int, datetime]:
    """When each revoked exception was revoked, by its number (a request is revoked once)."""
    return {e.subject: e.when for e in entries if e.kind == "revoke" and e.subject is not None}


def lapse_of(request: Request, revoked: Mapping[int, datetime], now: datetime) -> Lapsed | None:
    """How `request` lapsed by `now`; None if it was never approved or is still in force."""
    if request.decision != "approved":  # denied or never decided: it sanctioned nothing
        return None
    status = request.status_at(now)
    if status == "expired":
        return Lapsed(request, "expired", request.expires_at)
    if status == "revoked":
        return Lapsed(request, "revoked", revoked.get(request.id, now), request.reason)
    return None


def lapses(requests: Iterable[Request], entries: Iterable[Entry], now: datetime) -> list[Lapsed]:
    """The lapsed exceptions among `requests` at `now`, by number (`entries`: the ledger's,
    read for the revocation times only when one was revoked)."""
    approved = sorted((r for r in requests if r.decision == "approved"), key=lambda r: r.id)
    revoked = revocation_times(entries) if any(r.status == "revoked" for r in approved) else {}
    found = (lapse_of(r, revoked, now) for r in approved)
    return [lapse for lapse in found if lapse is not None]


# The declarations of lapsed exceptions by program name: a scan holds hundreds of programs
# and a ledger may hold hundreds of lapsed exceptions; each program looks up its own name.
Declared = dict[str, list[tuple[Lapsed, DeclaredBpfProgram]]]


def declared_by_name(lapsed: Iterable[Lapsed]) -> Declared:
    index: Declared = {}
    for lapse in lapsed:
        for declared in lapse.request.manifest.bpf_programs:
            index.setdefault(declared.name, []).append((lapse, declared))
    return index


def newest_lapsed(prog: BpfProgram, pins: set[str], index: Declared) -> Lapsed | None:
    """The lapsed exception that declared `prog` exactly and lapsed last, if any."""
    from patchguard.policy.match import differences  # match.py imports this module

    matching = [
        lapse
        for lapse, declared in index.get(prog.name, ())
        if not differences(prog, declared, pins)
    ]
    return max(matching, key=lambda lapse: (lapse.at, lapse.request.id), default=None)


def lapsed_finding(prog: BpfProgram, lapse: Lapsed) -> Finding:
    """The program, still running exactly as the lapsed exception declared it."""
    r = lapse.request
    where = ", ".join(a.target or "?" for a in prog.attachments) or "no attach point seen"
    ended = f"expired on {lapse.when_text}"
    if lapse.how == "revoked":
        ended = f"was revoked on {lapse.when_text}: {lapse.reason}"
    return Finding(
        EBPF,
        "exception-lapsed",
        Severity.LOW,
        visible(f"prog {prog.prog_id} ({prog.name}, {prog.prog_type})"),
        visible(
            f"exception #{r.id} ({r.vendor}, {r.manifest.product} {r.manifest.version}) {ended}; "
            f"the program it declared still runs exactly as declared ({where}), and no "
            "exception in force covers it"
        ),
        Disposition.SUSPICIOUS,
        None,
        {
            "prog_id": prog.prog_id,
            "name": prog.name,
            "exception": r.id,
            "lapse": lapse.how,
            "date": lapse.when_text,
            "attach": [a.target or "?" for a in prog.attachments],
        },
    )
