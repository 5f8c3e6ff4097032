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
from sqlalchemy import Connection, bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from patchguard.policy.chain import canonical
from patchguard.sealed_report import verify
from patchguard.server.db import (
    MISSED_HEARTBEATS,
    Alert,
    FindingRow,
    Host,
    Report,
    UTCDateTime,
    host_status,
)
from patchguard.server.errors import Refused
from patchguard.server.schemas import Body, Envelope
from patchguard.signing import verify_signature

log = logging.getLogger("patchguard.server")
CLEAN_BELOW = ("info", "low")  # a sweep whose findings are all below medium is clean
Row = dict[str, Any]  # a statement's parameters


@dataclass(frozen=True)
class Stored:
    report_pk: int
    seq: int
    duplicate: bool  # the same message was stored before: nothing new was written
    public_key: str  # the host's enrolled key (hex) it was verified under: worth caching


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
# Core statements built once, run on a Core connection (Server.write): the hot path pays for
# no ORM unit of work or identity map, and SQLAlchemy's compiled cache serves every call.
SELECT_HOST = select(*_HOST_COLUMNS).where(Host.fingerprint == bindparam("fp")).with_for_update()
SELECT_EARLIER = select(Report.id, Report.host_id, Report.seq, Report.body).where(
    Report.report_id == bindparam("rid")
)
INSERT_REPORT = insert(Report).returning(Report.id)
INSERT_FINDINGS = insert(FindingRow)


def _kept(column: Any, name: str) -> Any:
    """COALESCE(:name, column): a new value, or the column as it is when given None."""
    return func.coalesce(bindparam(name, type_=column.type), column)


UPDATE_HOST = (
    update(Host)
    .where(Host.id == bindparam("host_pk"))
    .values(
        last_seq=bindparam("new_seq"),
        last_seen_at=bindparam("now"),
        status=bindparam("new_status"),
        last_report_at=_kept(Host.last_report_at, "report_at"),
        last_heartbeat_at=_kept(Host.last_heartbeat_at, "heartbeat_at"),
        heartbeat_interval=_kept(Host.heartbeat_interval, "interval"),
        last_clean_sweep_at=_kept(Host.last_clean_sweep_at, "clean_at"),
        baseline_digest=_kept(Host.baseline_digest, "digest"),
    )
)
# PostgreSQL: the report, its findings (from one JSON array, in its order) and the host's row
# in one statement; every data-modifying CTE runs whether or not the last SELECT reads it.
WRITE_AT_ONCE = text(
    """
WITH report AS (
    INSERT INTO reports (report_id, host_id, seq, kind, sent_at, received_at, baseline_digest,
                         body, signature, seal, seal_detail)
    VALUES (:report_id, :host_id, :seq, :kind, :sent_at, :received_at, :baseline_digest,
            :body, :signature, :seal, :seal_detail)
    RETURNING id
), found AS (
    INSERT INTO findings (host_id, report_pk, severity, technique, subject, summary,
                          disposition, evidence, seen_at)
    SELECT :host_id, report.id, f.severity, f.technique, f.subject, f.summary,
           f.disposition, f.evidence, :received_at
    FROM report, ROWS FROM (json_to_recordset(CAST(:findings AS json)) AS (
        severity text, technique text, subject text, summary text, disposition text,
        evidence json)) WITH ORDINALITY
        AS f(severity, technique, subject, summary, disposition, evidence, n)
    ORDER BY f.n
), host AS (
    UPDATE hosts SET
        last_seq = :new_seq,
        last_seen_at = :now,
        status = :new_status,
        last_report_at = COALESCE(:report_at, last_report_at),
        last_heartbeat_at = COALESCE(:heartbeat_at, last_heartbeat_at),
        heartbeat_interval = COALESCE(:interval, heartbeat_interval),
        last_clean_sweep_at = COALESCE(:clean_at, last_clean_sweep_at),
        baseline_digest = COALESCE(:digest, baseline_digest)
    WHERE id = :host_pk
)
SELECT id FROM report
"""
).bindparams(
    *(
        bindparam(name, type_=UTCDateTime())
        for name in ("sent_at", "received_at", "now", "report_at", "heartbeat_at", "clean_at")
    )
)


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
            return Stored(earlier.id, earlier.seq, True, host.public_key)
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
    """A message that parsed, and whose signature verifies with its host's key when that key
    was known before the transaction (`public_key` set); otherwise `store` verifies it with
    the key it reads from the host's locked row, before it writes anything."""

    envelope: Envelope
    body: Body
    public_key: str | None  # hex, as enrolled; None: not verified yet
    seal: Seal | None  # the verdict on the scan document it carries, if any


def check(raw: bytes, public_key_of: Callable[[str], str | None]) -> Checked:
    """Parse `raw` and, when `public_key_of(fingerprint)` knows the host's enrolled key,
    verify its signature and any scan document's seal: the CPU-heavy part of taking a
    message, done before any transaction (and, on SQLite, the write lock) is taken. A key
    never changes for a fingerprint (its digest), so a cached key cannot be stale; an unknown
    one costs no extra transaction here, because `store` reads the host's row anyway."""
    envelope, body = parse(raw)
    public_key = public_key_of(body.host)
    if public_key is None:
        return Checked(envelope, body, None, None)
    return verified(Checked(envelope, body, None, None), public_key)


def verified(checked: Checked, public_key: str) -> Checked:
    """`checked` with its signature and seal verified under `public_key`, or Refused(401)."""
    envelope, body = checked.envelope, checked.body
    signature = bytes.fromhex(envelope.signature)
    if not verify_signature(bytes.fromhex(public_key), envelope.body.encode("ascii"), signature):
        raise Refused(401, f"signature does not verify for host {body.host}")
    return Checked(envelope, body, public_key, _seal_verdict(body.payload.scan, public_key))


def store(
    connection: Connection, checked: Checked, now: datetime, look_up_id: bool = False
) -> Stored:
    """Store a checked message once: the host's row locked first, then its sequence checked.
    `look_up_id`: look for its id even when its sequence number is new (a retry after the
    unique index refused it)."""
    host = _locked_host(connection, checked.body.host)
    if checked.public_key != host.public_key:  # not verified yet (a mismatch cannot happen)
        checked = verified(checked, host.public_key)
    envelope, body, seal = checked.envelope, checked.body, checked.seal
    resent = _check_new(connection, host, envelope, body, look_up_id)
    if resent is not None:
        return resent
    if seal is not None and not seal.intact:
        _alert_altered(connection, host, body, seal, now)
    _attest_baseline(connection, host, body, now)
    if host.status == "silent":
        _resolve(connection, host.id, "silent", now)
    written = _write_at_once if connection.dialect.name == "postgresql" else _write_each
    values = _host_values(host.id, body, now)
    report_pk = written(connection, _report_row(host, checked, now), values, _findings(body))
    return Stored(report_pk, body.seq, False, host.public_key)


def _report_row(host: HostState, checked: Checked, now: datetime) -> dict[str, Any]:
    """The report's columns, as INSERT_REPORT and WRITE_AT_ONCE take them."""
    envelope, body, seal = checked.envelope, checked.body, checked.seal
    return {
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
    }


def _write_each(connection: Connection, report: Row, host: Row, findings: list[Row]) -> int:
    """The report, its findings and the host's row in three statements (SQLite: in process,
    so a statement costs no round trip)."""
    report_pk: int = connection.execute(INSERT_REPORT, report).scalar_one()
    if findings:
        extra = {"host_id": host["host_pk"], "report_pk": report_pk, "seen_at": host["now"]}
        connection.execute(INSERT_FINDINGS, [{**f, **extra} for f in findings])
    connection.execute(UPDATE_HOST, host)
    return report_pk


def _write_at_once(connection: Connection, report: Row, host: Row, findings: list[Row]) -> int:
    """The same three writes in one PostgreSQL statement (data-modifying CTEs, the findings
    as one JSON array): one round trip and one statement for the server and the database
    to handle, where the three statements and a pipeline of one INSERT per finding took
    four round trips and most of the transaction's CPU."""
    rows = json.dumps(findings)  # as the JSON column would write each (ASCII, escaped)
    return int(connection.execute(WRITE_AT_ONCE, {**report, **host, "findings": rows}).scalar_one())


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


def _findings(body: Body) -> list[dict[str, Any]]:
    return [
        {
            "severity": f.severity,
            "technique": f.technique,
            "subject": f.subject,
            "summary": f.summary,
            "disposition": f.disposition,
            "evidence": {"surface": f.surface, "attack_id": f.attack_id, **f.evidence},
        }
        for f in body.payload.findings
    ]


def _attest_baseline(connection: Connection, host: HostState, body: Body, now: datetime) -> None:
    """A baseline digest may change only after a signed baseline-rotated message; otherwise
    someone re-created the baseline (a root attacker hiding a patch does exactly this)."""
    new = body.baseline_digest
    if new is None or new == host.baseline_digest or host.baseline_digest is None:
        return
    if body.kind != "baseline-rotated":
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


def _host_values(host_pk: int, body: Body, now: datetime) -> dict[str, Any]:
    """UPDATE_HOST's parameters: None keeps a column as it is (COALESCE)."""
    heartbeat = body.kind == "heartbeat"
    clean = all(f.severity in CLEAN_BELOW for f in body.payload.findings)
    return {
        "host_pk": host_pk,
        "new_seq": body.seq,
        "now": now,
        "new_status": "stopped" if body.kind == "stop" else "active",
        "digest": body.baseline_digest,
        "report_at": now if body.kind in ("report", "sweep", "finding") else None,
        "heartbeat_at": now if heartbeat else None,
        "interval": body.payload.interval if heartbeat else None,
        "clean_at": now if body.kind in ("report", "sweep") and clean else None,
    }


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
