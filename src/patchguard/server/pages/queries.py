"""The database reads behind each page, each filling one view model (pages/views.py).

Every list is bounded: the ledger is read one page at a time by keyset on seq (the primary
key, so a page costs the same at entry 100,000 as at entry 1), hosts likewise by name and id,
and the chart's counts are grouped in the database. Host status is `db.host_status`, the one
rule every server process applies on read."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, tuple_
from sqlalchemy.orm import Session

from patchguard.policy.chain import COLUMNS, entry_from_row
from patchguard.server.db import Alert, FindingRow, Host, LedgerEntry, Report, host_status
from patchguard.server.pages.chart import findings_chart
from patchguard.server.pages.ledger_view import ChainVerifier, Row, detail_checks, row_view
from patchguard.server.pages.views import (
    SEVERITIES,
    AlertView,
    ChainStatus,
    DayCount,
    EntryPage,
    FindingView,
    FleetHealth,
    HostPage,
    HostRow,
    HostsPage,
    LedgerPage,
    PublicPage,
    SealView,
)

PAGE_SIZE = 50  # ledger entries per page
HOSTS_PER_PAGE = 100
SEALS_SHOWN = 10  # the newest sealed scan documents' verdicts on a host's page
CHART_DAYS = 30
HEALTH_TTL = timedelta(seconds=5)  # how old the public page's fleet counts and chart may be
MAX_EVIDENCE_TEXT = 4000  # characters of one evidence value shown; the rest is elided
SHOWN_STATUS = {"active": "reporting"}  # the pages' word for db.host_status's "active"
FULL_SWEEP_KINDS = ("report", "sweep")  # a whole scan: it replaces the host's open findings


def ledger_page(
    session: Session, verifier: ChainVerifier, chain: ChainStatus, before: int | None
) -> LedgerPage:
    """Newest first: entries with seq < before (all when None), one page. `chain` is the
    verifier's refresh(), made before this transaction: it reads in transactions of its own."""
    top = min(before - 1, chain.entries) if before is not None else chain.entries
    low = max(top - PAGE_SIZE, 0)  # one row more than shown: the previous of the last row
    rows = _rows(session, low, top)
    by_seq = {r[0]: r for r in rows}
    shown = [r for r in reversed(rows) if isinstance(r[0], int) and r[0] > low]
    views = tuple(row_view(verifier, r, by_seq.get(_seq(r) - 1)) for r in shown)
    newer = top + PAGE_SIZE + 1 if top < chain.entries else None
    older = low + 1 if low > 0 else None
    return LedgerPage(views, chain, min(newer, chain.entries + 1) if newer else None, older)


def _seq(row: Row) -> int:
    return row[0] if isinstance(row[0], int) else 0


def _rows(session: Session, low: int, high: int) -> list[Row]:
    columns = [getattr(LedgerEntry, name) for name in COLUMNS]
    query = select(*columns).where(LedgerEntry.seq.between(max(low, 1), high))
    return [tuple(r) for r in session.execute(query.order_by(LedgerEntry.seq))]


def entry_page(
    session: Session, verifier: ChainVerifier, chain: ChainStatus, seq: int
) -> EntryPage | None:
    rows = {_seq(r): r for r in _rows(session, seq - 1, seq)}
    row = rows.get(seq)
    if row is None:
        return None
    entry = entry_from_row(row, seq)
    view = row_view(verifier, row, rows.get(seq - 1))
    if isinstance(entry, str):
        fields = tuple((name, str(value)) for name, value in zip(COLUMNS, row, strict=True))
        return EntryPage(view, fields, "", "", (view.check,), chain)
    fields = tuple(
        (name, "" if value is None else str(value)) for name, value in entry.as_dict().items()
    )
    payload = json.dumps(entry.data, indent=2, sort_keys=True, ensure_ascii=False)
    signed = json.dumps(entry.as_dict(), indent=2)
    checks = tuple(detail_checks(entry, rows.get(seq - 1), verifier))
    return EntryPage(view, fields, payload, signed, checks, chain)


def public_page(
    session: Session,
    verifier: ChainVerifier,
    chain: ChainStatus,
    now: datetime,
    missed: int,
    health: HealthCache | None = None,
) -> PublicPage:
    ledger = ledger_page(session, verifier, chain, None)
    fleet = health.get(session, now, missed) if health else fleet_health(session, now, missed)
    return PublicPage(fleet, verifier.fairness(now), ledger, now)


class HealthCache:
    """The fleet's health as the public page last computed it, for HEALTH_TTL: every visitor
    within those seconds is shown the same counts and chart (read from every host's row and
    30 days of findings) instead of each computing them again. Operator pages read afresh."""

    def __init__(self, ttl: timedelta = HEALTH_TTL) -> None:
        self._ttl, self._lock = ttl, threading.Lock()
        self._held: tuple[datetime, int, FleetHealth] | None = None

    def get(self, session: Session, now: datetime, missed: int) -> FleetHealth:
        with self._lock:
            held = self._held
        if held is not None and held[1] == missed and timedelta(0) <= now - held[0] < self._ttl:
            return held[2]
        fresh = fleet_health(session, now, missed)
        with self._lock:
            self._held = (now, missed, fresh)
        return fresh


@dataclass(frozen=True)
class _Liveness:
    """The columns `host_status` reads, without loading whole host rows."""

    revoked_at: datetime | None
    status: str
    heartbeat_interval: int | None
    last_seen_at: datetime | None


def _status_counts(session: Session, now: datetime, missed: int) -> dict[str, int]:
    columns = (Host.revoked_at, Host.status, Host.heartbeat_interval, Host.last_seen_at)
    counts = dict.fromkeys(("active", "silent", "stopped", "revoked"), 0)
    for row in session.execute(select(*columns)):
        status = host_status(_Liveness(*row), now, missed)  # type: ignore[arg-type]  # duck-typed
        counts[status] = counts.get(status, 0) + 1
    return counts


def fleet_health(session: Session, now: datetime, missed: int) -> FleetHealth:
    counts = _status_counts(session, now, missed)
    days = findings_by_day(session, now.date(), CHART_DAYS)
    return FleetHealth(
        sum(counts.values()),
        counts["active"],
        counts["silent"],
        counts["stopped"],
        counts["revoked"],
        days,
        findings_chart(days),
    )


def _day_expression(session: Session) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", FindingRow.seen_at))
    return func.date(FindingRow.seen_at)  # SQLite holds UTC text: its date is the UTC date


def findings_by_day(session: Session, today: date, days: int) -> tuple[DayCount, ...]:
    """Counts per UTC day and severity for the `days` days ending today, every day present."""
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), UTC)
    day = _day_expression(session).label("day")
    query = (
        select(day, FindingRow.severity, func.count())
        .where(FindingRow.seen_at >= since)
        .group_by(day, FindingRow.severity)
    )
    return fill_days(session.execute(query), first, days)


def fill_days(counted: Iterable[Sequence[Any]], first: date, days: int) -> tuple[DayCount, ...]:
    """(day, severity, count) rows into one DayCount per day; unknown severities are dropped."""
    table: dict[date, list[int]] = {
        first + timedelta(n): [0] * len(SEVERITIES) for n in range(days)
    }
    for when, severity, count in counted:
        day = when if isinstance(when, date) else date.fromisoformat(str(when))
        if day in table and severity in SEVERITIES:
            table[day][SEVERITIES.index(severity)] += int(count)
    return tuple(DayCount(d, tuple(c)) for d, c in sorted(table.items()))


def _latest_sweeps(session: Session, host_ids: Sequence[int]) -> dict[int, int]:
    """Per host, the id of its latest full report: findings before it were superseded."""
    query = (
        select(Report.host_id, func.max(Report.id))
        .where(Report.host_id.in_(host_ids), Report.kind.in_(FULL_SWEEP_KINDS))
        .group_by(Report.host_id)
    )
    return {host: pk for host, pk in session.execute(query)}


def _open_finding_filter(host_ids: Sequence[int], sweeps: dict[int, int]) -> ColumnElement[bool]:
    """Findings of the latest full report and of any report after it, per host."""
    clauses = [
        and_(FindingRow.host_id == h, FindingRow.report_pk >= sweeps.get(h, 0)) for h in host_ids
    ]
    return or_(*clauses) if clauses else FindingRow.id < 0


@dataclass(frozen=True)
class _Open:
    findings: dict[int, int]  # host id: open findings
    alerts: dict[int, int]  # host id: open alerts


def _host_row(host: Host, now: datetime, missed: int, counts: _Open) -> HostRow:
    status = host_status(host, now, missed)
    return HostRow(
        host.id,
        host.name,
        host.fingerprint,
        SHOWN_STATUS.get(status, status),
        host.last_report_at,
        host.last_clean_sweep_at,
        host.last_seen_at,
        counts.findings.get(host.id, 0),
        counts.alerts.get(host.id, 0),
    )


def _open_counts(session: Session, host_ids: Sequence[int]) -> _Open:
    if not host_ids:
        return _Open({}, {})
    sweeps = _latest_sweeps(session, host_ids)
    findings = select(FindingRow.host_id, func.count()).where(
        _open_finding_filter(host_ids, sweeps)
    )
    alerts = select(Alert.host_id, func.count()).where(
        Alert.host_id.in_(host_ids), Alert.resolved_at.is_(None)
    )
    found = session.execute(findings.group_by(FindingRow.host_id))
    alerted = session.execute(alerts.group_by(Alert.host_id))
    return _Open({h: n for h, n in found}, {h: n for h, n in alerted})


def hosts_page(
    session: Session, after: str | None, now: datetime, missed: int, csrf: str
) -> HostsPage:
    """Hosts by name (then id), one page after the host whose fingerprint is `after`."""
    query = select(Host).order_by(Host.name, Host.id).limit(HOSTS_PER_PAGE + 1)
    cursor = _cursor(session, after) if after else None
    if cursor is not None:
        query = query.where(tuple_(Host.name, Host.id) > tuple_(*cursor))
    hosts = list(session.scalars(query))
    more = len(hosts) > HOSTS_PER_PAGE
    hosts = hosts[:HOSTS_PER_PAGE]
    alerted = _alerted_hosts(session)
    counts = _open_counts(session, [h.id for h in {*hosts, *alerted}])
    rows = tuple(_host_row(h, now, missed, counts) for h in hosts)
    attention = tuple(_host_row(h, now, missed, counts) for h in alerted)
    return HostsPage(attention, rows, hosts[-1].fingerprint if more else None, csrf)


def _alerted_hosts(session: Session) -> list[Host]:
    """Hosts with an open alert, the oldest alert first (at most a page of them)."""
    oldest = func.min(Alert.created_at)
    query = (
        select(Host)
        .join(Alert, Alert.host_id == Host.id)
        .where(Alert.resolved_at.is_(None))
        .group_by(Host.id)
        .order_by(oldest, Host.id)
        .limit(HOSTS_PER_PAGE)
    )
    return list(session.scalars(query))


def _cursor(session: Session, fingerprint: str) -> tuple[str, int] | None:
    query = select(Host.name, Host.id).where(Host.fingerprint == fingerprint)
    found = session.execute(query).first()
    return (found[0], found[1]) if found is not None else None


def _evidence(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        return (("evidence", _text(value)),) if value not in (None, {}) else ()
    return tuple((str(k), _text(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))


def _text(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > MAX_EVIDENCE_TEXT:
        more = len(text) - MAX_EVIDENCE_TEXT
        return f"{text[:MAX_EVIDENCE_TEXT]}\u2026 ({more} more characters)"
    return text


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def _finding(f: FindingRow) -> FindingView:
    evidence = _evidence(f.evidence)
    return FindingView(
        f.severity, f.technique, f.subject, f.summary, f.disposition, evidence, f.seen_at
    )


def _open_findings(session: Session, host: Host) -> tuple[FindingView, ...]:
    sweeps = _latest_sweeps(session, [host.id])
    rows = session.scalars(select(FindingRow).where(_open_finding_filter([host.id], sweeps)))
    views = (_finding(f) for f in rows)
    return tuple(sorted(views, key=lambda f: (_severity_rank(f.severity), f.technique, f.subject)))


def _open_alerts(session: Session, host: Host) -> tuple[AlertView, ...]:
    query = select(Alert).where(Alert.host_id == host.id, Alert.resolved_at.is_(None))
    found = session.scalars(query.order_by(Alert.id))
    return tuple(AlertView(a.kind, a.severity, a.created_at, _evidence(a.evidence)) for a in found)


def _seals(session: Session, host: Host) -> tuple[SealView, ...]:
    query = (
        select(Report.seq, Report.received_at, Report.seal, Report.seal_detail)
        .where(Report.host_id == host.id, Report.seal.is_not(None))
        .order_by(Report.seq.desc())
        .limit(SEALS_SHOWN)
    )
    return tuple(
        SealView(seq, at, seal or "", detail or "")
        for seq, at, seal, detail in session.execute(query)
    )


def host_page(
    session: Session, fingerprint: str, now: datetime, missed: int, csrf: str
) -> HostPage | None:
    host = session.scalars(select(Host).where(Host.fingerprint == fingerprint)).one_or_none()
    if host is None:
        return None
    return HostPage(
        _host_row(host, now, missed, _open_counts(session, [host.id])),
        host.public_key,
        host.baseline_digest,
        host.enrolled_at,
        host.revoked_at,
        _open_findings(session, host),
        _open_alerts(session, host),
        csrf,
        _seals(session, host),
    )
