"""What people do with the ledger: register keys, request, decide, revoke, and read back the
live exceptions and the per-vendor record. Each call is one signed ledger entry; the rules
(policy/rules.py) decide whether it is allowed, so no caller can skip them."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from patchguard.policy.ledger import Appended, append, load
from patchguard.policy.manifest import Manifest
from patchguard.policy.match_lapsed import Lapsed, lapses
from patchguard.policy.rules import Request
from patchguard.signing import HostKey, fingerprint_of


def grant_key(
    path: Path,
    key: HostKey,
    public_key: bytes,
    owner: str,
    roles: Iterable[str],
    now: datetime | None = None,
) -> Appended:
    """Record that `public_key` belongs to `owner`, with these roles (none: only ownership,
    which is what makes a vendor's key unable to approve that vendor's requests)."""
    payload = {
        "policy": "key",
        "fingerprint": fingerprint_of(public_key),
        "public_key": public_key.hex(),
        "owner": owner,
        "roles": sorted(set(roles)),
    }
    return append(path, key, "policy", payload, now=now)


def init_ledger(path: Path, key: HostKey, owner: str, now: datetime | None = None) -> Appended:
    """Entry 1: the ledger owner's key, with the policy role."""
    return grant_key(path, key, key.public_key_bytes(), owner, ["policy"], now)


def set_max_expiry(path: Path, key: HostKey, days: int, now: datetime | None = None) -> Appended:
    return append(path, key, "policy", {"policy": "max_expiry_days", "days": days}, now=now)


def request_exception(
    path: Path,
    key: HostKey,
    manifest: Manifest,
    expires: date,
    scope: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Appended:
    """A pending request for the hooks `manifest` declares; scope None or empty: all hosts."""
    payload = {
        "manifest": manifest.to_dict(),
        "manifest_sha256": manifest.sha256,
        "scope": list(scope) if scope else "all",
        "expires": expires.isoformat(),
    }
    return append(path, key, "request", payload, now=now)


def decide(
    path: Path,
    key: HostKey,
    request_id: int,
    approve: bool,
    reason: str,
    now: datetime | None = None,
) -> Appended:
    kind = "approve" if approve else "deny"
    return append(path, key, kind, {"reason": reason}, subject=request_id, now=now)


def revoke(
    path: Path, key: HostKey, request_id: int, reason: str, now: datetime | None = None
) -> Appended:
    return append(path, key, "revoke", {"reason": reason}, subject=request_id, now=now)


def record_expiries(path: Path, key: HostKey, now: datetime | None = None) -> list[Appended]:
    """An `expire` entry for each approved exception whose date has passed, so that the end
    of an exception is in the ledger (and reaches the sinks) like its start was."""
    when = now or datetime.now(UTC)
    state = load(path).state
    due = [r.id for r in state.requests.values() if r.status == "approved" and not r.live(when)]
    return [append(path, key, "expire", {}, subject=rid, now=when) for rid in due]


def requests(path: Path) -> list[Request]:
    """Every request in the verified ledger, by id."""
    return sorted(load(path).state.requests.values(), key=lambda r: r.id)


def live_exceptions(path: Path, now: datetime | None = None) -> list[Request]:
    """The exceptions in force at `now`: approved, not revoked, not past their expiry. Derived
    from the verified ledger alone; a ledger that does not verify grants nothing (LedgerError)."""
    when = now or datetime.now(UTC)
    return [r for r in requests(path) if r.live(when)]


def lapsed_exceptions(path: Path, now: datetime | None = None) -> list[Lapsed]:
    """The exceptions approved once and no longer in force at `now` (expired, recorded or not,
    or revoked), with how and when each ended; from the verified ledger alone (LedgerError)."""
    return exceptions_at(path, now)[1]


def exceptions_at(path: Path, now: datetime | None = None) -> tuple[list[Request], list[Lapsed]]:
    """(live_exceptions, lapsed_exceptions) at one `now`, from one read of the ledger."""
    when = now or datetime.now(UTC)
    replay = load(path)
    requests = replay.state.requests.values()
    live = sorted((r for r in requests if r.live(when)), key=lambda r: r.id)
    return live, lapses(requests, replay.entries, when)


@dataclass(frozen=True)
class VendorStats:
    vendor: str
    requests: int
    approvals: int
    denials: int
    median_to_decision: timedelta | None  # None: nothing decided yet


def duration_text(value: timedelta | None) -> str:
    """A time to decision as the fairness report says it: 3d 4h, 2h 5m, 40s; - for none."""
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m" if hours else f"{rest}s"


def vendor_report(all_requests: Iterable[Request]) -> list[VendorStats]:
    """Per vendor (as its manifests name it), sorted by name."""
    by_vendor: dict[str, list[Request]] = {}
    for r in all_requests:
        by_vendor.setdefault(r.vendor, []).append(r)
    report = []
    for vendor in sorted(by_vendor, key=str.casefold):
        rs = by_vendor[vendor]
        waits = [
            (r.decided_at - r.requested_at).total_seconds() for r in rs if r.decided_at is not None
        ]
        median = timedelta(seconds=statistics.median(waits)) if waits else None
        approvals = sum(r.decision == "approved" for r in rs)
        denials = sum(r.decision == "denied" for r in rs)
        report.append(VendorStats(vendor, len(rs), approvals, denials, median))
    return report
