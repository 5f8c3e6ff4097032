"""The ledger as the public page shows it: each entry checked on display, the whole chain
replayed under the rules by each server process, and the fairness report from that replay.

Replaying (policy.ledger.replay's checks: numbering, hash, link, signature, rules) costs about
0.45 ms an entry, so 100,000 entries take most of a minute: too slow for a page, and too slow
for every process's start. The ledger is append-only, so the replay is incremental: a
`ChainVerifier` keeps the rules' state and the last verified entry, each page view replays
only what was added since (inline when that is little, in a background thread when it is a
lot, so no page ever waits for it), and a process starts from the newest replay saved, signed,
in the database (signed_replay.py). The row at the verified head is re-read on every refresh:
if it changed or vanished, the stored ledger was rewritten, and the replay starts again from
entry 1; every REVERIFY all rows up to the head are compared with a digest of them made while
replaying. Every entry shown is re-checked on its own (hash, signature, link to the entry
before it), which is cheap, so an edited row is caught on the page that shows it even before
the comparison reaches it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from patchguard.policy.chain import COLUMNS, Entry, check_link, content_hash, entry_from_row
from patchguard.policy.exceptions import duration_text, vendor_report
from patchguard.policy.rules import LedgerState, Request, RuleError, copy_state
from patchguard.server.db import LedgerEntry, transaction
from patchguard.server.pages import signed_replay
from patchguard.server.pages.views import ChainStatus, Check, Fairness, LedgerRow, VendorRow
from patchguard.signing import HostKey, verify_signature

INLINE_LIMIT = 2000  # entries replayed while a page waits (about 0.2 s); more: in background
CHUNK = 1000  # rows read per query while replaying
MAX_DESCRIPTION = 600  # characters kept per entry: a huge vendor name cannot fill the memory
FAIRNESS_TTL = timedelta(seconds=60)  # pending turns into expired with the clock alone
REVERIFY = timedelta(minutes=10)  # the stored rows compared with the replay this often
SAVE_EVERY = 10_000  # entries replayed inline before the replay is saved again
CHECKS_KEPT = 1024  # per-entry checks remembered (a signature check costs about 0.1 ms)

Row = tuple[object, ...]
log = logging.getLogger("patchguard.server.pages")
_COLUMNS = tuple(getattr(LedgerEntry, name) for name in COLUMNS)


def _row_at(session: Session, seq: int) -> Row | None:
    row = session.execute(select(*_COLUMNS).where(LedgerEntry.seq == seq)).first()
    return tuple(row) if row is not None else None


def select_rows(session: Session, low: int, high: int) -> list[Row]:
    """Rows with low <= seq <= high, in seq order (the primary key: an index range scan)."""
    query = select(*_COLUMNS).where(LedgerEntry.seq.between(low, high)).order_by(LedgerEntry.seq)
    return [tuple(row) for row in session.execute(query)]


def _first_line(exc: SQLAlchemyError) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "\u2026"


@dataclass
class _Replay:
    """One replay from entry 1 (or from a saved one that continues it); the one in use is
    mutated only under ChainVerifier's lock."""

    state: LedgerState
    started: datetime  # when the replay from entry 1 began
    checked: datetime  # when the stored rows 1..verified were last read and compared
    previous: Entry | None = None
    descriptions: list[str] = field(default_factory=list)
    owner_key: str | None = None  # entry 1's signer
    problem: str | None = None
    bad_seq: int | None = None
    digest: bytes = b""  # signed_replay.row_digest over the rows 1..verified

    @property
    def verified(self) -> int:
        return self.previous.seq if self.previous else 0

    def advance(self, fetch: Callable[[int, int], list[Row]], target: int) -> None:
        """Replay the stored rows after `verified` up to `target`, one chunk per query."""
        while self.problem is None and self.verified < target:
            high = min(target, self.verified + CHUNK)
            for row in fetch(self.verified + 1, high):
                if not self.take(row):
                    return
            if self.verified < high:  # the rows ran out before `high`: one is missing
                self.fail(self.verified + 1, f"entry {self.verified + 1} is missing")

    def take(self, row: Row) -> bool:
        entry = entry_from_row(row, self.verified + 1)
        reason = entry if isinstance(entry, str) else check_link(entry, self.previous)
        if reason is None and isinstance(entry, Entry):
            try:
                description = self.state.apply(entry)
            except RuleError as exc:
                reason = f"entry {entry.seq}: {exc}"
        if reason is not None or not isinstance(entry, Entry):
            seq = row[0] if isinstance(row[0], int) else self.verified + 1
            self.fail(seq, reason or "unreadable entry")
            return False
        self.descriptions.append(_clip(description))
        self.owner_key = self.owner_key or entry.actor
        self.previous = entry
        self.digest = signed_replay.row_digest(self.digest, row)
        return True

    def fail(self, seq: int, reason: str) -> None:
        self.problem, self.bad_seq = reason, seq

    def copy(self) -> _Replay:
        """One to go on with apart from this one (records are frozen: fresh containers do)."""
        return replace(self, state=copy_state(self.state), descriptions=list(self.descriptions))

    def saved(self) -> signed_replay.Saved:
        head = self.previous.hash if self.previous else ""
        derived = (self.state, self.descriptions, self.owner_key, self.previous)
        return signed_replay.Saved(
            self.verified, head, self.digest, self.started, self.checked, derived
        )


def _fresh() -> _Replay:
    now = datetime.now(UTC)
    return _Replay(LedgerState(), now, now)


def _from_saved(saved: signed_replay.Saved) -> _Replay | None:
    """The replay a saved one holds, if it has the shape this code saves."""
    derived = saved.derived
    if not isinstance(derived, tuple) or len(derived) != 4:
        return None
    state, descriptions, owner_key, previous = derived
    shapes = isinstance(state, LedgerState) and isinstance(descriptions, list)
    shapes = shapes and isinstance(previous, Entry) and isinstance(owner_key, str)
    if not shapes or not previous.seq == saved.seq == len(descriptions):
        return None
    if previous.hash != saved.head_hash:
        return None
    return _Replay(
        state,
        saved.started_at,
        saved.checked_at,
        previous,
        descriptions,
        owner_key,
        digest=saved.rows_digest,
    )


class _Stopped(Exception):
    """The server is shutting down: a background replay ends between two chunks."""


Job = Callable[[int], _Replay]  # replays up to the entry given, in the background


class ChainVerifier:
    """The replay of one server database's ledger, kept by each server process.

    A process starts from the newest replay saved in the database under the server's key
    (`key`; signed_replay.py says why that is safe) and replays only the entries after it, in
    a background thread; without a key or a saved replay, from entry 1. Small additions are
    replayed while the page waits, large ones in the background. Every REVERIFY the stored
    rows up to the verified head are read again and compared with the digest the replay made
    of them: any change replays the ledger from entry 1, which stops at the changed entry. So
    does a page that found an entry failing its own checks. Background replays are saved for
    the next process. Each read is its own short transaction (on SQLite every transaction
    holds the write lock); the replay's work is done outside them."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        key: HostKey | None = None,
        inline_limit: int = INLINE_LIMIT,
        reverify: timedelta = REVERIFY,
        save_every: int = SAVE_EVERY,
    ) -> None:
        self._factory, self._key = factory, key
        self._inline_limit, self._reverify, self._save_every = inline_limit, reverify, save_every
        self._lock = threading.Lock()
        self._replay = _fresh()
        self._building: _Replay | None = None  # the background replay, for its progress
        self._worker: threading.Thread | None = None
        self._fairness: tuple[int, datetime, Fairness] | None = None
        self._suspect = False
        self._stopping = threading.Event()
        self._resumed = False  # the first refresh looks for a saved replay
        self._saved: tuple[int, datetime] = (0, self._replay.checked)  # newest saved or loaded

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background replay (at its next chunk) and wait for it: a server shutting
        down must not leave a thread reading a database that is about to go away."""
        self._stopping.set()
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def refresh(self) -> ChainStatus:
        """Catch up with the stored ledger as far as this page may wait, and say where it is."""
        with self._lock:
            stored = self._check_head()
            if not self._busy() and not self._stopping.is_set():  # closed: no new work
                self._catch_up(stored)
            return self._status(stored)

    def suspect(self) -> None:
        """A page found an entry that fails its own checks: replay from entry 1 soon."""
        self._suspect = True

    def _fetch(self, low: int, high: int) -> list[Row]:
        if self._stopping.is_set():
            raise _Stopped
        with self._factory() as session:
            return select_rows(session, low, high)

    def _catch_up(self, stored: int) -> None:
        r = self._replay
        backlog = stored - r.verified
        if not self._resumed:  # a backlog a page may wait for needs no saved replay
            self._resumed = True
            if self._key is not None and backlog > self._inline_limit:
                return self._start(self._from_saved, stored)
        if self._suspect and r.problem is None:
            self._suspect = False
            return self._start(self._from_entry_1, stored)
        if _now() - r.checked > self._reverify:
            return self._start(self._compared if r.problem is None else self._from_entry_1, stored)
        if r.problem is not None or not backlog:
            return None
        if backlog > self._inline_limit or self._save_due(r.verified + backlog):
            return self._start(self._continued, stored)
        return r.advance(self._fetch, stored)

    def _save_due(self, verified: int) -> bool:
        return self._key is not None and verified - self._saved[0] >= self._save_every

    def _busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _check_head(self) -> int:
        """The stored entry count; start again at once if the verified head was changed in
        any field or the ledger got shorter."""
        head = self._replay.previous
        with self._factory() as session:
            stored = session.scalar(select(func.max(LedgerEntry.seq))) or 0
            if head is None:
                return stored
            now = _row_at(session, head.seq)
        if now is None or tuple(now) != tuple(head.as_dict().values()) or stored < head.seq:
            self._replay, self._fairness = _fresh(), None
        return stored

    def _start(self, job: Job, target: int) -> None:
        self._building = _fresh()  # progress 0 until the job has its starting point
        self._worker = threading.Thread(
            target=self._run, args=(job, target), name="ledger-replay", daemon=True
        )
        self._worker.start()

    def _run(self, job: Job, target: int) -> None:
        """A replay made without the lock, saved, then put in use (after replaying what was
        added meanwhile). If the database fails meanwhile, the replay in use stays; the next
        page starts again."""
        try:
            done = job(target)
            self._save(done)
            with self._lock:
                done.advance(self._fetch, self._replay.verified)
                self._replay, self._fairness = done, None
        except _Stopped:
            log.info("ledger replay stopped: the server is shutting down")
        except SQLAlchemyError as exc:
            if not self._stopping.is_set():  # else the database went away with the server
                log.error("ledger replay stopped, the database failed: %s", _first_line(exc))
        finally:
            self._building = None

    def _replayed(self, base: _Replay, target: int) -> _Replay:
        self._building = base
        base.advance(self._fetch, target)
        return base

    def _from_entry_1(self, target: int) -> _Replay:
        return self._replayed(_fresh(), target)

    def _continued(self, target: int) -> _Replay:
        with self._lock:
            base = self._replay.copy()
        return self._replayed(base, target)

    def _from_saved(self, target: int) -> _Replay:
        """The newest saved replay this server signed, if its head is still stored as it was,
        continued to `target`; else a replay from entry 1."""
        assert self._key is not None
        with self._factory() as session:
            saved = signed_replay.newest(session, self._key)
            base = _from_saved(saved) if saved is not None else None
            row = _row_at(session, base.verified) if base is not None else None
        if base is None or base.previous is None:
            return self._from_entry_1(target)
        if row is None or tuple(row) != tuple(base.previous.as_dict().values()):
            log.warning("saved ledger replay at entry %d: that entry changed since", base.verified)
            return self._from_entry_1(target)
        self._saved = (base.verified, base.checked)
        log.info(
            "ledger replay resumed at entry %d (saved, signed): %d entries to replay",
            base.verified,
            max(0, target - base.verified),
        )
        return self._replayed(base, target)

    def _compared(self, target: int) -> _Replay:
        """The stored rows up to the verified head read again: unchanged, the replay goes on
        from its head; changed anywhere, a replay from entry 1 (which stops at the change)."""
        with self._lock:
            base = self._replay.copy()
        checked = _now()
        if self._digest_of(base.verified) != base.digest:
            log.warning("ledger rows 1-%d changed since replayed: replaying from 1", base.verified)
            return self._from_entry_1(target)
        base.checked = checked
        return self._replayed(base, target)

    def _digest_of(self, last: int) -> bytes:
        digest = b""
        for low in range(1, last + 1, CHUNK):
            for row in self._fetch(low, min(last, low + CHUNK - 1)):
                digest = signed_replay.row_digest(digest, row)
        return digest

    def _save(self, done: _Replay) -> None:
        """Keep `done` for the next process to start from, when it is new."""
        if self._key is None or done.problem is not None or done.previous is None:
            return
        if (done.verified, done.checked) <= self._saved:
            return
        try:
            with transaction(self._factory) as session:
                signed_replay.save(session, self._key, done.saved())
        except IntegrityError:  # another process saved one at this head just now
            return
        self._saved = (done.verified, done.checked)

    def _status(self, stored: int) -> ChainStatus:
        r, building = self._replay, self._building
        head = r.previous.hash if r.previous else None
        progress = building.verified if building is not None else None
        return ChainStatus(stored, r.verified, head, r.problem, progress, r.started, r.checked)

    def description(self, seq: int) -> str | None:
        with self._lock:
            texts = self._replay.descriptions
            return texts[seq - 1] if 0 < seq <= len(texts) else None

    def verdict(self, seq: int) -> Check:
        """What the chain replay says about entry `seq`."""
        with self._lock:
            r = self._replay
            if r.bad_seq is not None and seq >= r.bad_seq:
                return Check(False, f"the ledger breaks at entry {r.bad_seq}: {r.problem}")
            if seq <= r.verified:
                return Check(True, "replayed from entry 1 under the ledger's rules")
            return Check(True, f"not yet replayed (the replay is at entry {r.verified})")

    def fairness(self, now: datetime) -> Fairness:
        """The per-vendor report from the replayed state (cached while the ledger is still)."""
        with self._lock:
            r, cached = self._replay, self._fairness
            if cached and cached[0] == r.verified and now - cached[1] < FAIRNESS_TTL:
                return cached[2]
            report = _fairness(r, now)
            self._fairness = (r.verified, now, report)
            return report


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()  # as the rules compare owners


def _worst(requests: Sequence[Request]) -> timedelta | None:
    waits = [r.decided_at - r.requested_at for r in requests if r.decided_at is not None]
    return max(waits, default=None)


def _fairness(r: _Replay, now: datetime) -> Fairness:
    owner = r.state.owner_of(r.owner_key) if r.owner_key else None
    by_vendor: dict[str, list[Request]] = {}
    for request in r.state.requests.values():
        by_vendor.setdefault(request.vendor, []).append(request)
    rows = []
    for stats in vendor_report(r.state.requests.values()):
        requests = by_vendor[stats.vendor]
        pending = sum(q.status_at(now) == "pending" for q in requests)
        rows.append(
            VendorRow(
                stats.vendor,
                stats.requests,
                stats.approvals,
                stats.denials,
                pending,
                duration_text(stats.median_to_decision),
                duration_text(_worst(requests)),
                owner is not None and _same(owner, stats.vendor),
            )
        )
    note = _fairness_note(r, len(rows))
    return Fairness(tuple(rows), owner, note)


def _fairness_note(r: _Replay, vendors: int) -> str | None:
    if r.problem is not None:
        return f"covers entries 1 to {r.verified} only: {r.problem}"
    return None if vendors else "no exception has been requested yet"


def _payload_text(entry: Entry) -> str:
    return _clip(f"{entry.kind} entry, payload {entry.payload}")


def row_view(verifier: ChainVerifier, row: Row, previous: Row | None) -> LedgerRow:
    """One entry for the ledger list: its own check (hash, signature, link) and the chain's."""
    seq = row[0] if isinstance(row[0], int) else 0
    entry = entry_from_row(row, seq)
    if isinstance(entry, str):
        return LedgerRow(seq, "?", "?", "?", None, entry, Check(False, entry))
    check = _remembered_check(entry, previous)
    if check.ok:
        check = verifier.verdict(seq)
    else:
        verifier.suspect()
    description = verifier.description(seq) or _payload_text(entry)
    return LedgerRow(
        entry.seq, entry.time, entry.kind, entry.actor, entry.subject, description, check
    )


@lru_cache(maxsize=CHECKS_KEPT)
def _remembered_check(entry: Entry, previous: Row | None) -> Check:
    """own_check, remembered for the rows most pages show (the newest): the key is every
    field of both rows, so a changed row is checked afresh."""
    return own_check(entry, previous)


def own_check(entry: Entry, previous: Row | None) -> Check:
    """The checks one entry supports alone, given the row before it (None for entry 1)."""
    before = entry_from_row(previous, entry.seq - 1) if previous is not None else None
    if isinstance(before, str):
        return Check(False, f"the entry before it cannot be read: {before}")
    if before is None and entry.seq != 1:
        return Check(False, f"entry {entry.seq - 1}, which it links to, is missing")
    reason = check_link(entry, before)
    if reason is not None:
        return Check(False, reason)
    return Check(True, "hash, signature and link verify")


def detail_checks(entry: Entry, previous: Row | None, verifier: ChainVerifier) -> list[Check]:
    """The entry page's checks, one line each, so a reader sees which one failed."""
    fields = (entry.seq, entry.time, entry.kind, entry.actor, entry.actor_key, entry.subject)
    same = content_hash(*fields, entry.payload, entry.prev_hash) == entry.hash
    signed = _signed(entry)
    key = f"the actor's key ({entry.actor})"
    return [
        Check(same, f"the hash {'is' if same else 'is not'} the SHA-256 of the entry's contents"),
        Check(signed, f"the signature {'verifies' if signed else 'does not verify'} with {key}"),
        _link_check(entry, previous),
        verifier.verdict(entry.seq),
    ]


def _link_check(entry: Entry, previous: Row | None) -> Check:
    check = own_check(entry, previous)
    if not check.ok:
        return check
    if entry.seq == 1:
        return Check(True, "it is entry 1: its prev_hash is the start of a ledger")
    return Check(True, f"its prev_hash is entry {entry.seq - 1}'s hash")


def _signed(entry: Entry) -> bool:
    try:
        key, signature = bytes.fromhex(entry.actor_key), bytes.fromhex(entry.signature)
        digest = bytes.fromhex(entry.hash)
    except ValueError:
        return False
    return len(key) == 32 and verify_signature(key, digest, signature)


def _now() -> datetime:
    return datetime.now(UTC)
