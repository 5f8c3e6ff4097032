"""How long the server keeps what hosts sent: reports and their findings older than the
retention are deleted (`patchguard server prune`); hosts, alerts, tokens' hashes and the ledger
are kept. A host's `last_seq` stays, so an old report sent again is still a replay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from patchguard.server.db import FindingRow, Report

DEFAULT_DAYS = 90


@dataclass(frozen=True)
class Pruned:
    reports: int
    findings: int


def prune(session: Session, now: datetime, days: int = DEFAULT_DAYS) -> Pruned:
    cutoff = now - timedelta(days=days)
    old = select(Report.id).where(Report.received_at < cutoff).scalar_subquery()
    findings = session.execute(
        delete(FindingRow)
        .where(FindingRow.report_pk.in_(old))
        .execution_options(synchronize_session=False)
    )
    reports = session.execute(
        delete(Report)
        .where(Report.received_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return Pruned(reports.rowcount, findings.rowcount)  # type: ignore[attr-defined]
