"""Taking in a host's signed message: parse and bound it, check who sent it and that it is
new, store it once, and draw the server's own conclusions (baseline attestation, silence).

Every refusal is a `Refused` with an HTTP status and one line saying why; nothing is stored
for a refused message. `check` parses a message and verifies its signature (and the seal of
a scan document it carries) before any transaction; `store` then runs its effects in one
transaction that first locks its host's row, so two server processes taking the same host's
messages agree on the order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from patchguard.policy.chain import canonical
from patchguard.sealed_report import verify
from patchguard.server.db import MISSED_HEARTBEATS, Alert, FindingRow, Host, Report, host_status
from patchguard.server.errors import Refused
from patchguard.server.schemas import Body, Envelope
from patchguard.signing import verify_signature

log = logging.getLogger("patchguard.server")
CLEAN_BELOW = ("info", "low")  # a sweep whose findings are all below medium is clean


@dataclass(frozen=True)
class Stored:
    report_pk: int
    seq: int
    duplicate: bool  # the same message was stored before: nothing new was written


def validation_text(exc: ValidationError) -> str:
    """Pydantic's first complaint as one line: 'payload.findings.0.summary: String should ...'."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse(raw: bytes) -> tuple[Envelope, Body]:
    """The envelope and its body, or Refused(400/422) saying what is wrong."""
    try:
        envelope = Envelope.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise Refused(400, "malformed JSON") from None
        raise Refused(422, f"envelope: {validation_text(exc)}") from None
    try:
        data = json.loads(envelope.body)
        canonical_text = canonical(data)
    except (ValueError, RecursionError):  # RecursionError: nested beyond Python's stack
        raise Refused(400, "body: not JSON") from None
    if canonical_text != envelope.body:
        raise Refused(400, "body: not in canonical form (sorted keys, no spaces, ASCII)")
    try:
        return envelope, Body.model_validate(data)
    except ValidationError as exc:
        raise Refused(422, f"body.{validation_text(exc)}") from None


@dataclass(frozen=True)
class HostState:
    """The columns of a host's row that ingest reads, locked for the transaction."""

    id: int
    fingerprint: str
    public_key: str
    revoked_at: datetime | None
    last_seq: int
    status: str
    baseline_digest: str | None
    heartbeat_interval: int | None


_HOST_COLUMNS = [getattr(Host, f.name) for f in fields(HostState)]
# Core statements built once, run on the session's connection: the server's hot path pays for
# no ORM unit of work or identity map, and SQLAlchemy's compiled cache serves every call.
SELECT_HOST = select(*_HOST_COLUMNS).where(Host.fingerprint == bindparam("fp")).with_for_update()
SELECT_EARLIER = select(Report.id, Report.host_id, Report.seq, Report.body).where(
    Report.report_id == bindparam("rid")
)
INSERT_REPORT = insert(Report).returning(Report.id)
INSERT_FINDINGS = insert(FindingRow)


def _locked_host(connection: Connection, fingerprint: str) -> HostState:
    row = connection.execute(SELECT_HOST, {"fp": fingerprint}).one_or_none()
    if row is None:
        raise Refused(403, f"unknown host {fingerprint}: enrol it first")
    host = HostState(*row)
    if host.revoked_at is not None:
        raise Refused(403, f"host {fingerprint} was revoked at {host.revoked_at.isoformat()}")
    return host


def _check_new(
    connection: Connection, host: HostState, envelope: Envelope, body: Body, look_up_id: bool
) -> Stored | None:
    """A Stored for an exact resend; Refused for a replay or regression; None if new."""
    if body.seq > host.last_seq and not look_up_id:
        return None  # an id used before by another report fails the unique index instead
    earlier = connection.execute(SELECT_EARLIER, {"rid": body.id}).one_or_none()
    if earlier is not None:
        if earlier.host_id == host.id and earlier.body == envelope.body:
            return Stored(earlier.id, earlier.seq, True)
        raise Refused(409, f"report id {body.id} was already used by another report")
    if body.seq <= host.last_seq:
        raise Refused(
            409, f"sequence {body.seq} is not after {host.last_seq}: a replay or a regression"
        )
    return None


@dataclass(frozen=True)
class Seal:
    intact: bool
    detail: str

    @property
    def word(self) -> str:
        return "intact" if self.intact else "altered"


@dataclass(frozen=True)
class Checked:
    """A message that parsed and whose signature verifies with its host's key."""

    envelope: Envelope
    body: Body
    public_key: str  # hex, as enrolled
    seal: Seal | None  # the verdict on the scan document it carries, if any


def check(raw: bytes, public_key_of: Callable[[str], str | None]) -> Checked:
    """Parse `raw` and verify its signature and any scan document's seal: the CPU-heavy part
    of taking a message, done before any transaction (and, on SQLite, the write lock) is
    taken. `public_key_of(fingerprint)`: the host's enrolled key (a key never changes for a
    fingerprint, which is its digest), None if no such host."""
    envelope, body = parse(raw)
    public_key = public_key_of(body.host)
    if public_key is None:
        raise Refused(403, f"unknown host {body.host}: enrol it first")
    signature = bytes.fromhex(envelope.signature)
    text = envelope.body.encode("ascii")
    if not verify_signature(bytes.fromhex(public_key), text, signature):
        raise Refused(401, f"signature does not verify for host {body.host}")
    return Checked(envelope, body, public_key, _seal_verdict(body.payload.scan, public_key))


def public_key(session: Session, fingerprint: str) -> str | None:
    """The host's enrolled key (hex), for `check`; None if no host has that fingerprint."""
    return session.scalar(select(Host.public_key).where(Host.fingerprint == fingerprint))


def store(session: Session, checked: Checked, now: datetime, look_up_id: bool = False) -> Stored:
    """Store a checked message once: the host's row locked first, then its sequence checked.
    `look_up_id`: look for its id even when its sequence number is new (a retry after the
    unique index refused it)."""
    envelope, body, seal = checked.envelope, checked.body, checked.seal
    connection = session.connection()
    host = _locked_host(connection, body.host)
    if host.public_key != checked.public_key:  # cannot happen: the fingerprint is its digest
        raise Refused(401, f"signature does not verify for host {host.fingerprint}")
    resent = _check_new(connection, host, envelope, body, look_up_id)
    if resent is not None:
        return resent
    report_pk = connection.execute(
        INSERT_REPORT,
        {
            "report_id": body.id,
            "host_id": host.id,
            "seq": body.seq,
            "kind": body.kind,
            "sent_at": body.time,
            "received_at": now,
            "baseline_digest": body.baseline_digest,
            "body": envelope.body,
            "signature": envelope.signature,
            "seal": seal.word if seal else None,
            "seal_detail": seal.detail if seal else None,
        },
    ).scalar_one()
    if seal is not None and not seal.intact:
        _alert_altered(connection, host, body, seal, now)
    if body.payload.findings:
        connection.execute(INSERT_FINDINGS, _findings(host.id, report_pk, body, now))
    changes = _attest_baseline(connection, host, body, now)
    changes |= _host_changes(connection, host, body, now)
    connection.execute(update(Host).where(Host.id == host.id).values(changes))
    return Stored(report_pk, body.seq, False)


def _seal_verdict(scan: str | None, public_key: str) -> Seal | None:
    """The verdict on the scan document a report carries, against the host's enrolled key:
    its own length, SHA-256 and signature (`sealed_report.verify`)."""
    if scan is None:
        return None
    verdict = verify(scan.encode("utf-8"), bytes.fromhex(public_key))
    return Seal(verdict.intact, verdict.detail)


def _alert_altered(
    connection: Connection, host: HostState, body: Body, seal: Seal, now: datetime
) -> None:
    """Stored, not refused: the message itself is signed by the host key, so what arrived
    is what the host's report command read; refusing it would throw away the evidence that
    something on the host rewrites what patchguard writes."""
    evidence = {"report_id": body.id, "seq": body.seq, "seal": seal.detail}
    _critical_alert(connection, "report-altered", host, evidence, now)
    log.warning(
        "host %s: report %d carried an altered scan: %s", host.fingerprint, body.seq, seal.detail
    )


def _critical_alert(
    connection: Connection, kind: str, host: HostState, evidence: dict[str, Any], now: datetime
) -> None:
    values = {"kind": kind, "host_id": host.id, "severity": "critical", "created_at": now}
    connection.execute(insert(Alert).values(**values, resolved_at=None, evidence=evidence))


def _findings(host_id: int, report_pk: int, body: Body, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "host_id": host_id,
            "report_pk": report_pk,
            "severity": f.severity,
            "technique": f.technique,
            "subject": f.subject,
            "summary": f.summary,
            "disposition": f.disposition,
            "evidence": {"surface": f.surface, "attack_id": f.attack_id, **f.evidence},
            "seen_at": now,
        }
        for f in body.payload.findings
    ]


def _attest_baseline(
    connection: Connection, host: HostState, body: Body, now: datetime
) -> dict[str, Any]:
    """A baseline digest may change only after a signed baseline-rotated message; otherwise
    someone re-created the baseline (a root attacker hiding a patch does exactly this)."""
    new = body.baseline_digest
    if new is None or new == host.baseline_digest:
        return {}
    if body.kind != "baseline-rotated" and host.baseline_digest is not None:
        evidence = {
            "previous_digest": host.baseline_digest,
            "digest": new,
            "report_id": body.id,
            "seq": body.seq,
            "boot_id": body.boot_id,
        }
        _critical_alert(connection, "baseline-changed", host, evidence, now)
        log.warning(
            "host %s: baseline digest changed from %s to %s without a rotation",
            host.fingerprint,
            host.baseline_digest[:12],
            new[:12],
        )
    return {"baseline_digest": new}


def _host_changes(
    connection: Connection, host: HostState, body: Body, now: datetime
) -> dict[str, Any]:
    changes: dict[str, Any] = {"last_seq": body.seq, "last_seen_at": now}
    if body.kind == "heartbeat":
        changes["last_heartbeat_at"] = now
        changes["heartbeat_interval"] = body.payload.interval or host.heartbeat_interval
    if body.kind in ("report", "sweep", "finding"):
        changes["last_report_at"] = now
    clean = all(f.severity in CLEAN_BELOW for f in body.payload.findings)
    if body.kind in ("report", "sweep") and clean:
        changes["last_clean_sweep_at"] = now
    if host.status == "silent":
        _resolve(connection, host.id, "silent", now)
    changes["status"] = "stopped" if body.kind == "stop" else "active"
    return changes


def _resolve(connection: Connection, host_id: int, kind: str, now: datetime) -> None:
    connection.execute(
        update(Alert)
        .where(Alert.host_id == host_id, Alert.kind == kind, Alert.resolved_at.is_(None))
        .values(resolved_at=now)
    )


def mark_silent(session: Session, now: datetime, missed: int = MISSED_HEARTBEATS) -> list[str]:
    """Hosts that went silent since the last check: their status becomes `silent` and each
    gets one alert. The conditional UPDATE makes sure that of several server processes
    running this at once, exactly one raises the alert."""
    query = select(Host).where(Host.status == "active", Host.revoked_at.is_(None))
    found = []
    for host in session.scalars(query).all():
        if host_status(host, now, missed) != "silent":
            continue
        changed = session.execute(
            update(Host)
            .where(
                Host.id == host.id, Host.status == "active", Host.last_seen_at == host.last_seen_at
            )
            .values(status="silent")
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
            continue
        evidence = {
            "last_seen_at": host.last_seen_at.isoformat() if host.last_seen_at else None,
            "heartbeat_interval": host.heartbeat_interval,
            "missed": missed,
        }
        alert = Alert(
            kind="silent",
            host_id=host.id,
            severity="high",
            created_at=now,
            resolved_at=None,
            evidence=evidence,
        )
        session.add(alert)
        log.warning("host %s is silent: missed %d heartbeats", host.fingerprint, missed)
        found.append(host.fingerprint)
    return found
