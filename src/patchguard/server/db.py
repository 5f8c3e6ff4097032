"""The fleet server's database: SQLAlchemy 2 models, the engine and the session factory.

All of the server's state lives here, so several server processes on one PostgreSQL serve
the same fleet; SQLite (the default, one file) serves a single process. The schema is made by
the Alembic migrations in `patchguard/server/migrations` (`migrate(url)`), never by
`create_all`. Every time is timezone-aware UTC (SQLite stores it naive; `UTCDateTime` puts the
zone back on read).

Tables (what the web pages read):

- `hosts`: one row per enrolled host. `name` (hostname the host gave; text from a host:
  escape it), `public_key` (raw ed25519, hex, 64 digits: the key that signs its baselines and
  reports), `fingerprint` (16 hex digits, unique; `engine.keys.fingerprint_of`),
  `enrolled_at`, `revoked_at` (set: every report refused), `last_seq` (highest report
  sequence number stored), `last_seen_at` (any signed message), `last_report_at`
  (kind report/sweep/finding), `last_heartbeat_at`, `last_clean_sweep_at` (a report or sweep
  with no finding at medium or above), `heartbeat_interval` (seconds, as the host last said;
  None: it never sent a heartbeat), `status` (the stored status: `active`, `silent`,
  `stopped`, `revoked`; use `host_status()` for the status at a given time, which also
  computes silence on read), `baseline_digest` (SHA-256 hex of the baseline the host last
  checked against).
- `tokens`: bearer tokens. `token_hash` (SHA-256 hex of the token; the token itself is
  printed once and never stored), `role` (`operator`: the operator API and pages; `enrol`:
  enrols hosts), `uses_left` (None: unlimited; an enrol token starts at 1), `expires_at`
  (None: never), `created_at`, `label`.
- `reports`: every signed message a host sent, stored exactly once. `report_id` (the host's
  idempotent id, unique), `host_id`, `seq` (unique per host), `kind` (`report`, `heartbeat`,
  `sweep`, `finding`, `stop`, `baseline-rotated`), `sent_at` (the host's clock),
  `received_at` (the server's), `baseline_digest`, `body` (the exact signed canonical JSON
  text), `signature` (hex); anyone with the host's public key can re-verify a stored report.
  `seal`: when the report carried a sealed `patchguard scan --json` document
  (`payload.scan`), the server's verdict on it against the host's enrolled key, `intact` or
  `altered` (None: no document); `seal_detail` says why in one line
  (`sealed_report.verify`).
- `findings`: the findings the reports carried. `host_id`, `report_pk` (reports.id),
  `severity` (info, low, medium, high, critical), `technique`, `subject`, `summary`,
  `disposition`, `evidence` (JSON object), `seen_at` (received_at of the report). Text from
  a host: escape it.
- `alerts`: what the server itself concluded. `kind` (`silent`: missed heartbeats;
  `baseline-changed`: a new baseline digest without a signed baseline-rotated event before
  it; `report-altered`: a report carried a scan document whose seal does not hold), `host_id`,
  `severity`, `created_at`, `resolved_at` (None: open; a silent host that reports again
  resolves its alert), `evidence` (JSON object).
- `ledger_entries`: the exception ledger as the server holds it (loaded with
  `patchguard server ledger import`, verified before it is stored): the columns of
  `policy.chain.Entry` (`seq` is the key), served by `GET /api/v1/policy`.
- `ledger_log`: when the imported ledger is a transparency log, its one row: `origin` (the
  log's name) and `public_key` (raw ed25519, hex) of the log key.
- `ledger_checkpoints`: the latest signed checkpoint of each import of a log (`size` is the
  key, `note` the signed note's exact bytes), checked against the entries before it is
  stored; the largest is served with the log's tiles (server/tlog.py).
- `ledger_replays`: the newest replays of `ledger_entries` a server process made
  (pages/signed_replay.py): `seq` and `head_hash` (the verified head), `rows_digest` (a
  running SHA-256 over every row 1..seq, all columns), `started_at` (when the replay from
  entry 1 it continues began), `checked_at` (when the rows were last read and compared),
  `derived` (the rules' state and one description per entry, compressed), `signer` and
  `signature` (the server's key over all of it). Written by the server, trusted only when
  the signature verifies under the server's own key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DEFAULT_URL = "sqlite:////var/lib/patchguard/server.db"
HOST_STATUSES = ("active", "silent", "stopped", "revoked")
REPORT_KINDS = ("report", "heartbeat", "sweep", "finding", "stop", "baseline-rotated")
ALERT_KINDS = ("silent", "baseline-changed", "report-altered")
SEALS = ("intact", "altered")  # reports.seal: the verdict on a scan document a report carried
ROLES = ("operator", "enrol")
MISSED_HEARTBEATS = 3  # K: a host that misses this many heartbeats is silent
PG_POOL = 16  # PostgreSQL connections per server process


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(16), unique=True)
    enrolled_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_seq: Mapped[int] = mapped_column(default=0)
    last_seen_at: Mapped[datetime | None]
    last_report_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    last_clean_sweep_at: Mapped[datetime | None]
    heartbeat_interval: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16), default="active")
    baseline_digest: Mapped[str | None] = mapped_column(String(64))


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    uses_left: Mapped[int | None]
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    label: Mapped[str] = mapped_column(String(255), default="")


class Report(Base):
    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("host_id", "seq", name="uq_reports_host_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id"))  # uq_reports_host_seq leads
    seq: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))
    sent_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(index=True)
    baseline_digest: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    seal: Mapped[str | None] = mapped_column(String(16))
    seal_detail: Mapped[str | None] = mapped_column(Text)


class FindingRow(Base):
    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id"), index=True)
    report_pk: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    technique: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)
    disposition: Mapped[str] = mapped_column(String(32))
    evidence: Mapped[dict[str, Any]]
    seen_at: Mapped[datetime] = mapped_column(index=True)


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id"), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    evidence: Mapped[dict[str, Any]]


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(16))
    actor_key: Mapped[str] = mapped_column(String(64))
    subject: Mapped[int | None]
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    signature: Mapped[str] = mapped_column(String(128))


class LedgerLog(Base):
    __tablename__ = "ledger_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    origin: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(String(64))


class LedgerCheckpoint(Base):
    __tablename__ = "ledger_checkpoints"

    size: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    note: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerReplay(Base):
    __tablename__ = "ledger_replays"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    rows_digest: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    checked_at: Mapped[datetime]
    derived: Mapped[bytes] = mapped_column(LargeBinary)
    signer: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions begin in _sqlite_begin
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
    cursor.execute("PRAGMA synchronous = FULL")  # a stored report survives a power cut
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # Every transaction takes SQLite's write lock at its start: a transaction that read first
    # and wrote later could otherwise fail (SQLITE_BUSY) when another wrote in between.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def engine(url: str) -> Engine:
    """An engine for a database URL (sqlite:///PATH, postgresql+psycopg://...)."""
    if url.startswith("sqlite"):
        made = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(made, "connect", _sqlite_pragmas)
        event.listen(made, "begin", _sqlite_begin)
        return made
    # No pre-ping (a round trip per request): a connection lost to a database restart fails
    # one request with a 503, which hosts retry from their spool. No overflow: a connection
    # opened for a burst and closed after it costs PostgreSQL a backend process each time (a
    # fork and its start-up, more CPU than a report); requests beyond the pool wait their turn.
    return create_engine(url, pool_size=PG_POOL, max_overflow=0, pool_timeout=30, pool_recycle=3600)


def session_factory(bound: Engine) -> sessionmaker[Session]:
    return sessionmaker(bound, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed at the end of the block, or rolled back."""
    with factory() as session, session.begin():
        yield session


def utcnow() -> datetime:
    return datetime.now(UTC)


def host_status(host: Host, now: datetime, missed: int = MISSED_HEARTBEATS) -> str:
    """The status at `now`, computed on read so that every server process agrees: revoked and
    stopped are as stored; a host whose last message is older than `missed` heartbeat
    intervals is silent."""
    if host.revoked_at is not None:
        return "revoked"
    if host.status == "stopped":
        return "stopped"
    if host.heartbeat_interval and host.last_seen_at is not None:
        late = now - host.last_seen_at > timedelta(seconds=missed * host.heartbeat_interval)
        return "silent" if late else "active"
    return host.status
