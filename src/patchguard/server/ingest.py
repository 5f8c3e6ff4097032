"""Taking in a host's signed message: parse and bound it, check who sent it and that it is
new, store it once, and draw the server's own conclusions (baseline attestation, silence).

Every refusal is a `Refused` with an HTTP status and one line saying why; nothing is stored
for a refused message. A message's effects run in one transaction that first locks its
host's row, so two server processes taking the same host's messages agree on the order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from patchguard.policy.chain import canonical
from patchguard.server.db import MISSED_HEARTBEATS, Alert, FindingRow, Host, Report, host_status
from patchguard.server.errors import Refused
from patchguard.server.schemas import Body, Envelope
from patchguard.signing import verify_signature

log = logging.getLogger("patchguard.server")
CLEAN_BELOW = ("info", "low")  # a sweep whose findings are all below medium is clean
INSERT_REPORT = insert(Report).returning(Report.id)  # built once: the hot path
INSERT_FINDINGS = insert(FindingRow)


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


def _locked_host(session: Session, fingerprint: str) -> Host:
    query = select(Host).where(Host.fingerprint == fingerprint).with_for_update()
    host = session.scalars(query).one_or_none()
    if host is None:
        raise Refused(403, f"unknown host {fingerprint}: enrol it first")
    if host.revoked_at is not None:
        raise Refused(403, f"host {fingerprint} was revoked at {host.revoked_at.isoformat()}")
    return host


def _check_new(
    session: Session, host: Host, envelope: Envelope, body: Body, look_up_id: bool
) -> Stored | None:
    """A Stored for an exact resend; Refused for a replay or regression; None if new."""
    if body.seq > host.last_seq and not look_up_id:
        return None  # an id used before by another report fails the unique index instead
    query = select(Report).where(Report.report_id == body.id)
    earlier = session.scalars(query).one_or_none()
    if earlier is not None:
        if earlier.host_id == host.id and earlier.body == envelope.body:
            return Stored(earlier.id, earlier.seq, True)
        raise Refused(409, f"report id {body.id} was already used by another report")
    if body.seq <= host.last_seq:
        raise Refused(
            409, f"sequence {body.seq} is not after {host.last_seq}: a replay or a regression"
        )
    return None


def ingest(session: Session, raw: bytes, now: datetime, look_up_id: bool = False) -> Stored:
    """Store one message. `look_up_id`: look for its id even when its sequence number is new
    (a retry after the unique index refused it)."""
    envelope, body = parse(raw)
    host = _locked_host(session, body.host)
    signature = bytes.fromhex(envelope.signature)
    text = envelope.body.encode("ascii")
    if not verify_signature(bytes.fromhex(host.public_key), text, signature):
        raise Refused(401, f"signature does not verify for host {host.fingerprint}")
    resent = _check_new(session, host, envelope, body, look_up_id)
    if resent is not None:
        return resent
    # Core statements, not the unit of work: this is the server's hot path.
    report_pk = session.execute(
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
        },
    ).scalar_one()
    if body.payload.findings:
        session.execute(INSERT_FINDINGS, _findings(host.id, report_pk, body, now))
    changes = _attest_baseline(session, host, body, now) | _host_changes(session, host, body, now)
    session.execute(
        update(Host)
        .where(Host.id == host.id)
        .values(changes)
        .execution_options(synchronize_session=False)
    )
    session.expunge(host)  # its attributes are stale now; nothing may flush them
    return Stored(report_pk, body.seq, False)


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


def _attest_baseline(session: Session, host: Host, body: Body, now: datetime) -> dict[str, Any]:
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
        session.execute(
            insert(Alert).values(
                kind="baseline-changed",
                host_id=host.id,
                severity="critical",
                created_at=now,
                resolved_at=None,
                evidence=evidence,
            )
        )
        log.warning(
            "host %s: baseline digest changed from %s to %s without a rotation",
            host.fingerprint,
            host.baseline_digest[:12],
            new[:12],
        )
    return {"baseline_digest": new}


def _host_changes(session: Session, host: Host, body: Body, now: datetime) -> dict[str, Any]:
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
        _resolve(session, host, "silent", now)
    changes["status"] = "stopped" if body.kind == "stop" else "active"
    return changes


def _resolve(session: Session, host: Host, kind: str, now: datetime) -> None:
    session.execute(
        update(Alert)
        .where(Alert.host_id == host.id, Alert.kind == kind, Alert.resolved_at.is_(None))
        .values(resolved_at=now)
        .execution_options(synchronize_session=False)
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
