"""What each server page shows, as frozen records: the queries fill them, the templates render
them. Every string here is plain text (a vendor name, a host name, a finding's evidence); the
templates escape it, so nothing in a view model is ever markup."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

SEVERITIES = ("critical", "high", "medium", "low", "info")


@dataclass(frozen=True)
class Check:
    """One verification verdict: ok, and the sentence that says what was checked or failed."""

    ok: bool
    text: str


@dataclass(frozen=True)
class LedgerRow:
    seq: int
    time: str
    kind: str
    actor: str
    subject: int | None
    description: str  # what the entry did, from the replay; the payload when not yet replayed
    check: Check


@dataclass(frozen=True)
class ChainStatus:
    """The whole ledger, replayed under the rules by this server process."""

    entries: int  # rows stored
    verified: int  # entries 1..verified replayed and verified
    head: str | None  # hash of the last verified entry
    problem: str | None  # the first bad entry's reason; None: no problem found
    progress: int | None  # a replay running in the background: where it is
    started: datetime  # when the replay shown began reading the ledger at entry 1
    checked: datetime  # when the stored rows were last read and compared with the replay

    @property
    def complete(self) -> bool:
        return self.problem is None and self.verified == self.entries


@dataclass(frozen=True)
class LedgerPage:
    rows: tuple[LedgerRow, ...]
    chain: ChainStatus
    newer: int | None  # `?before=` for the page of newer entries; None: this is the newest
    older: int | None  # `?before=` for the page of older entries; None: no older entries


@dataclass(frozen=True)
class EntryPage:
    row: LedgerRow
    fields: tuple[tuple[str, str], ...]  # the signed entry, column by column, as stored
    payload: str  # the payload, indented for reading
    signed_json: str  # the entry as `ledger show --json` prints it
    checks: tuple[Check, ...]
    chain: ChainStatus


@dataclass(frozen=True)
class VendorRow:
    vendor: str
    requests: int
    approvals: int
    denials: int
    pending: int
    median_to_decision: str  # "2d 3h", "-" when nothing was decided
    worst_to_decision: str
    ledger_owner: bool  # the vendor is the ledger's owner: listed like everyone else


@dataclass(frozen=True)
class Fairness:
    vendors: tuple[VendorRow, ...]
    owner: str | None  # the owner of entry 1's key
    note: str | None  # why the report is empty or partial


@dataclass(frozen=True)
class DayCount:
    day: date
    counts: tuple[int, ...]  # one per SEVERITIES, same order


@dataclass(frozen=True)
class FleetHealth:
    enrolled: int
    reporting: int
    silent: int
    stopped: int
    revoked: int
    days: tuple[DayCount, ...]  # the last 30 days, oldest first, every day present
    chart_svg: str  # rendered by chart.findings_chart (already escaped SVG)


@dataclass(frozen=True)
class PublicPage:
    health: FleetHealth
    fairness: Fairness
    ledger: LedgerPage
    generated_at: datetime


@dataclass(frozen=True)
class HostRow:
    id: int
    name: str
    fingerprint: str
    status: str  # reporting, silent, stopped, revoked
    last_report: datetime | None
    last_clean_sweep: datetime | None
    last_seen: datetime | None
    open_findings: int
    open_alerts: int


@dataclass(frozen=True)
class HostsPage:
    attention: tuple[HostRow, ...]  # hosts with open alerts (silent, baseline changed), first
    rows: tuple[HostRow, ...]
    after: str | None  # `?after=` for the next page; None: the last page
    csrf: str


@dataclass(frozen=True)
class FindingView:
    severity: str
    technique: str
    subject: str
    summary: str
    disposition: str
    evidence: tuple[tuple[str, str], ...]  # key, value as text
    seen_at: datetime


@dataclass(frozen=True)
class AlertView:
    kind: str
    severity: str
    created_at: datetime
    evidence: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SealView:
    """The server's verdict on a sealed scan document one report carried."""

    seq: int
    received_at: datetime
    seal: str  # intact, altered
    detail: str


@dataclass(frozen=True)
class HostPage:
    host: HostRow
    public_key: str
    baseline_digest: str | None
    enrolled_at: datetime
    revoked_at: datetime | None
    findings: tuple[FindingView, ...]
    alerts: tuple[AlertView, ...]
    csrf: str
    seals: tuple[SealView, ...] = ()  # the newest sealed scan documents' verdicts
