"""The exception ledger in SQLite: append-only, hash-chained, every entry signed by its actor.

One table, `entries`, one row per entry (policy/chain.py says what is hashed and signed),
marked as a patchguard ledger by `PRAGMA user_version = 1`. Triggers refuse UPDATE and DELETE,
which stops accidents; deliberate edits are what `verify` is for. An append runs in one
BEGIN IMMEDIATE transaction: take the write lock, read and check the head, seal the new entry
onto it, check it against the rules, insert, commit. The rules need only the policy entries
(keys, the expiry maximum) and the entries about the new entry's request, found by index and
each checked (hash, signature) before it is replayed: an append costs the same at entry 10 and
at entry 100,000, and whole-ledger verification is `verify`'s job (and `load`'s, once per
head: a long-running reader replays only what was appended since). A crash, a full disk or a
refusal anywhere before the commit leaves the ledger as it was (SQLite rolls back a
half-written transaction when the file is next opened). An export (`export_json`) verifies
exactly like the database. A ledger made a transparency log (policy/transparency/store.py)
also extends its stored tree and signs a checkpoint in each append's transaction.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patchguard.policy.chain import (
    COLUMNS,
    FORMAT,
    GENESIS_HASH,
    Entry,
    check_link,
    check_sealed,
    entry_from_row,
    seal,
)
from patchguard.policy.paths import DEFAULT_LEDGER as DEFAULT_LEDGER
from patchguard.policy.paths import LEDGER_ENV as LEDGER_ENV
from patchguard.policy.paths import default_ledger_path as default_ledger_path
from patchguard.policy.rules import LedgerState, RuleError, copy_state
from patchguard.policy.transparency import TransparencyError, store
from patchguard.policy.transparency.store import LogConfig
from patchguard.safe_read import LIMITS, InputError, os_reason, parse_json, read_bounded, size_text
from patchguard.signing import HostKey

USER_VERSION = 1
_APPEND_ONLY = "SELECT RAISE(ABORT, 'the patchguard ledger is append-only')"
_SCHEMA = (
    "CREATE TABLE entries (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, kind TEXT NOT NULL, "
    "actor TEXT NOT NULL, actor_key TEXT NOT NULL, subject INTEGER, payload TEXT NOT NULL, "
    "prev_hash TEXT NOT NULL, hash TEXT NOT NULL, signature TEXT NOT NULL)",
    f"CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN {_APPEND_ONLY}; END",
    f"CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN {_APPEND_ONLY}; END",
    f"PRAGMA user_version = {USER_VERSION}",
)
# What an append looks up instead of replaying: added to older ledgers by their next append.
# (a payload that is not JSON, which only a tampered row has, indexes as NULL, not an error)
_POLICY = "(CASE WHEN json_valid(payload) THEN json_extract(payload, '$.policy') END)"
_INDEXES = (
    f"CREATE INDEX IF NOT EXISTS entries_by_policy ON entries (kind, {_POLICY})",
    "CREATE INDEX IF NOT EXISTS entries_by_subject ON entries (subject)",
)
_COLUMNS = ", ".join(COLUMNS)
_RULES_READ = (  # what the rules read to judge an entry about request ?1 (NULL: none)
    f"SELECT {_COLUMNS} FROM entries WHERE kind = 'policy' AND {_POLICY} = 'key'",
    f"SELECT {_COLUMNS} FROM entries WHERE subject = ?1",
    *(  # the expiry maximum in force now, and when the request was made
        f"SELECT {_COLUMNS} FROM entries WHERE seq = (SELECT max(seq) FROM entries WHERE "
        f"kind = 'policy' AND {_POLICY} = 'max_expiry_days' AND seq < {bound})"
        for bound in ("coalesce(?1, 1 << 62)", "1 << 62")
    ),
    # the newest log-key rotation: the next one must start from the key it announced
    f"SELECT {_COLUMNS} FROM entries WHERE seq = (SELECT max(seq) FROM entries WHERE "
    f"kind = 'policy' AND {_POLICY} = 'log_key')",
)


class LedgerError(Exception):
    """The ledger cannot be read, does not verify, or refused an entry; str() is one line."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # rows read
    head: str | None  # hash of the last entry that verified
    bad_seq: int | None = None  # the first bad entry
    reason: str | None = None  # "entry 7: hash does not match its contents"


@dataclass(frozen=True)
class Replay:
    """A ledger read back: the entries that verified, what each did, and the state they make."""

    result: VerifyResult
    entries: tuple[Entry, ...]
    descriptions: tuple[str, ...]  # one line per entry, for `ledger show` and the guard's sinks
    state: LedgerState = field(compare=False)


def replay(rows: Sequence[Sequence[object]], after: Replay | None = None) -> Replay:
    """Check rows in order (numbering, hash, link, signature, rules); stop at the first bad
    one, keeping the entries before it (shown, but a failed Replay is never acted on).
    `after`: a verified replay the rows continue (its state is copied, never changed)."""
    base = after if after is not None and after.result.ok else None
    state = copy_state(base.state) if base else LedgerState()
    entries = list(base.entries) if base else list[Entry]()
    lines = list(base.descriptions) if base else list[str]()
    previous: Entry | None = entries[-1] if entries else None
    total = len(entries) + len(rows)  # rows read
    for position, row in enumerate(rows, len(entries) + 1):
        entry = entry_from_row(row, position)
        reason = entry if isinstance(entry, str) else check_link(entry, previous)
        if reason is None and isinstance(entry, Entry):
            try:
                lines.append(state.apply(entry))
            except RuleError as exc:
                reason = f"entry {entry.seq}: {exc}"
        if reason is not None:
            seq = row[0] if row and isinstance(row[0], int) else None
            head = previous.hash if previous else None
            result = VerifyResult(False, total, head, seq, reason)
            return Replay(result, tuple(entries), tuple(lines), state)
        assert isinstance(entry, Entry)
        entries.append(entry)
        previous = entry
    result = VerifyResult(True, len(entries), previous.hash if previous else None)
    return Replay(result, tuple(entries), tuple(lines), state)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def _identity(path: Path, real: Path) -> os.stat_result | None:
    """The fstat of the ledger file at `real` (`path` resolved), opened without following a
    link and without blocking; None if there is none. A FIFO or device would hang or flood
    SQLite, so the file must be regular and within the ledger's size limit. The fd is closed
    before SQLite opens the file: closing an fd drops the process's POSIX locks on the file."""
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(path, f"cannot read the ledger: {os_reason(exc)}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise LedgerError(path, f"{_kind(st.st_mode)}, not a regular file")
    if st.st_size > LIMITS["ledger"]:
        limit = size_text(LIMITS["ledger"])
        raise LedgerError(path, f"larger than {limit}: not a ledger file")
    return st


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _same_file(path: Path, real: Path, checked: os.stat_result | None) -> None:
    """After SQLite opened `real`: it is still the file checked (not swapped in between)."""
    try:
        now = os.stat(real, follow_symlinks=False)
    except OSError as exc:
        raise LedgerError(path, f"cannot read the ledger: {os_reason(exc)}") from None
    if checked is not None and (now.st_dev, now.st_ino) != (checked.st_dev, checked.st_ino):
        raise LedgerError(path, "the ledger file was replaced while it was opened")
    if not stat.S_ISREG(now.st_mode):
        raise LedgerError(path, f"{_kind(now.st_mode)}, not a regular file")


# How long a reader waits for another process's write lock, in seconds. The guard lowers it
# (a lock held by anyone must not hold a sweep past the watchdog); the CLI waits out appends.
READ_LOCK_WAIT = 30.0
WRITE_LOCK_WAIT = 30.0
# Called before each open that may wait that long: the guard counts it as progress, so a run
# of bounded lock waits is not taken for a hang by its watchdog.
BEFORE_OPEN: Callable[[Path], None] | None = None


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    if BEFORE_OPEN is not None:
        BEFORE_OPEN(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    real = path.resolve()
    checked = _identity(path, real)
    if checked is None and not create:
        raise LedgerError(path, "no ledger here (start one with `patchguard ledger init`)")
    # A reader opens read-write when it can: only then can SQLite roll back a transaction
    # that a killed appender left behind, instead of refusing to read.
    mode = "rwc" if create else ("rw" if os.access(real, os.W_OK) else "ro")
    uri = f"{real.as_uri()}?mode={mode}"
    wait = WRITE_LOCK_WAIT if create else READ_LOCK_WAIT
    conn = sqlite3.connect(uri, uri=True, timeout=wait, isolation_level=None)
    try:
        _same_file(path, real, checked)
        conn.execute("PRAGMA synchronous = FULL")  # a committed entry survives a power cut
    except BaseException:
        conn.close()
        raise
    return conn


def _is_ledger(conn: sqlite3.Connection, path: Path, create: bool) -> bool:
    """True if the file holds the ledger's table; an empty database (say, one whose first
    append was refused) is an empty ledger, given its schema when `create` is set."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if version == 0 and not tables:
        for statement in _SCHEMA if create else ():
            conn.execute(statement)
        return create
    if version != USER_VERSION or "entries" not in tables:
        raise LedgerError(path, f"not a patchguard ledger (user_version {version})")
    return True


def _select(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return list(conn.execute(f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY seq"))


def _insert(conn: sqlite3.Connection, entry: Entry) -> None:
    marks = ", ".join("?" for _ in COLUMNS)
    values = [getattr(entry, name) for name in COLUMNS]
    conn.execute(f"INSERT INTO entries ({', '.join(COLUMNS)}) VALUES ({marks})", values)


def _rows_from_json(path: Path) -> list[tuple[object, ...]]:
    try:
        doc = parse_json(read_bounded(path, "export"), str(path))
    except InputError as exc:
        raise LedgerError(path, f"cannot read the export: {exc.reason}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LedgerError(path, f"not a patchguard ledger export ({FORMAT})")
    entries = doc.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LedgerError(path, "entries is not a list of objects")
    return [tuple(e.get(name) for name in COLUMNS) for e in entries]


def read_rows(path: Path) -> list[tuple[object, ...]]:
    """Every stored row in seq order, unjudged. A `.json` path is read as an export."""
    if path.suffix == ".json":
        return _rows_from_json(path)
    try:
        conn = _connect(path, create=False)
        try:
            return _select(conn) if _is_ledger(conn, path, create=False) else []
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LedgerError(path, f"cannot read the ledger: {exc}") from None


def _rows_and_tree(path: Path) -> tuple[list[tuple[object, ...]], str | None]:
    """Every row, and why the log's stored tree is not the one they give (None: it is, or
    there is none), read in one transaction: the stored hashes are checked, never trusted."""
    if path.suffix == ".json":
        return _rows_from_json(path), None
    try:
        conn = _connect(path, create=False)
        try:
            conn.execute("BEGIN")
            if not _is_ledger(conn, path, create=False):
                return [], None
            rows = _select(conn)
            entries = replay(rows).entries
            return rows, store.tree_mismatch(conn, store.tree_of(entries))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LedgerError(path, f"cannot read the ledger: {exc}") from None


def verify(path: Path, root: str | None = None, head: str | None = None) -> VerifyResult:
    """Check the whole ledger. `root`: the fingerprint entry 1 must be signed by; `head`: a hash
    published earlier, which must still be in it. Together they catch a ledger rewritten
    from the start or cut short, which no chain can show by itself."""
    rows, tree_reason = _rows_and_tree(path)
    result = replay(rows).result
    if not result.ok:
        return result
    if tree_reason is not None:
        return VerifyResult(False, len(rows), result.head, None, tree_reason)
    if root is not None and (not rows or rows[0][3] != root):
        signer = f"by {rows[0][3]}" if rows else "(the ledger is empty)"
        return VerifyResult(
            False, len(rows), result.head, 1, f"entry 1: signed {signer}, not {root}"
        )
    if head is not None and head not in {row[8] for row in rows}:
        reason = f"no entry has the known hash {head}: the ledger was cut short or rewritten"
        return VerifyResult(False, len(rows), result.head, None, reason)
    return result


# The last verified replay of each ledger file, by its head: the guard asks at every sweep and
# trigger, and a replay checks one signature per entry. Only what verified is kept, so an
# entry changed below an unchanged head cannot be taken in by this (`verify` reads it all).
_REPLAYS: dict[Path, tuple[tuple[object, ...], Replay]] = {}


def head_of(path: Path) -> tuple[object, ...] | None:
    """(device, inode, seq, hash) of the ledger file's last entry, by one lookup on the
    primary key; None for an export or a file that cannot be asked."""
    if path.suffix == ".json":
        return None
    try:
        st = os.stat(path)
        conn = _connect(path, create=False)
        try:
            if not _is_ledger(conn, path, create=False):
                return None
            row = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
            last = row.fetchone() or (0, "")
        finally:
            conn.close()
    except (OSError, sqlite3.Error, LedgerError):
        return None
    return (st.st_dev, st.st_ino, *last)


def _rows_since(path: Path, cached: tuple[tuple[object, ...], Replay] | None) -> Replay:
    """The ledger replayed on from `cached` when its last entry is still there unchanged in
    the same file (only the entries appended since are checked), else from the start."""
    if cached is None or not cached[1].entries or path.suffix == ".json":
        return replay(read_rows(path))
    last = cached[1].entries[-1]
    try:
        conn = _connect(path, create=False)
        try:
            query = f"SELECT {', '.join(COLUMNS)} FROM entries WHERE seq >= ? ORDER BY seq"
            rows = list(conn.execute(query, (last.seq,)))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LedgerError(path, f"cannot read the ledger: {exc}") from None
    if not rows or tuple(rows[0]) != tuple(last.as_dict().values()):
        return replay(read_rows(path))
    return replay(rows[1:], after=cached[1])


def load(path: Path) -> Replay:
    """The verified ledger; LedgerError if any entry is bad (nothing in it is then trusted).
    A ledger whose head did not change since it last verified is not replayed again, and
    one that grew is replayed from that head on."""
    head = head_of(path)
    cached = _REPLAYS.get(path)
    if head is not None and cached is not None and cached[0] == head:
        return cached[1]
    same_file = cached is not None and head is not None and cached[0][:2] == head[:2]
    loaded = _rows_since(path, cached if same_file else None)
    if not loaded.result.ok:
        _REPLAYS.pop(path, None)
        raise LedgerError(path, f"does not verify: {loaded.result.reason}")
    if head is not None:
        _REPLAYS[path] = (head, loaded)
    return loaded


@dataclass(frozen=True)
class Appended:
    entry: Entry
    description: str


def append(
    path: Path,
    key: HostKey,
    kind: str,
    payload: Mapping[str, Any],
    subject: int | None = None,
    now: datetime | None = None,
) -> Appended:
    """Sign and add one entry (a request's subject is its own number), all or nothing."""
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    try:
        conn = _connect(path, create=True)
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(path, f"cannot open the ledger: {exc}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")  # the write lock before reading the head
        try:
            done = _append_locked(conn, path, key, kind, payload, subject, when)
            conn.execute("COMMIT")
            return done
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise LedgerError(path, f"cannot append, nothing written: {exc}") from None
    finally:
        conn.close()


def append_locked(
    conn: sqlite3.Connection,
    path: Path,
    key: HostKey,
    kind: str,
    payload: Mapping[str, Any],
    now: datetime | None = None,
) -> Appended:
    """`append` inside a transaction `locked` holds (for a caller that writes more with it)."""
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return _append_locked(conn, path, key, kind, payload, None, when)


def _append_locked(
    conn: sqlite3.Connection,
    path: Path,
    key: HostKey,
    kind: str,
    payload: Mapping[str, Any],
    subject: int | None,
    when: datetime,
) -> Appended:
    _is_ledger(conn, path, create=True)
    for statement in _INDEXES:
        conn.execute(statement)
    last = _head(conn, path)
    if last is not None and when < last.when:
        raise LedgerError(path, f"the clock ({when.isoformat()}) is behind entry {last.seq}")
    seq = last.seq + 1 if last else 1
    prev = last.hash if last else GENESIS_HASH
    entry = seal(seq, when, kind, key, seq if kind == "request" else subject, payload, prev)
    try:
        description = _state_for(conn, path, entry).apply(entry)
    except RuleError as exc:
        raise LedgerError(path, f"refused: {exc}") from None
    _insert(conn, entry)
    try:  # a transparency log signs the new tree before the entry is committed
        store.sign_after_append(conn, entry.seq)
    except TransparencyError as exc:
        raise LedgerError(path, f"cannot sign the checkpoint, nothing appended: {exc}") from None
    return Appended(entry, description)


def _checked(row: Sequence[object], previous: Entry | None, path: Path) -> Entry:
    entry = entry_from_row(row, 0)
    reason = entry if isinstance(entry, str) else check_sealed(entry, previous)
    if reason is not None:
        raise LedgerError(path, f"does not verify, nothing appended: {reason}")
    assert isinstance(entry, Entry)
    return entry


def _head(conn: sqlite3.Connection, path: Path) -> Entry | None:
    """The last entry, checked by itself (hash, signature, fields): what the new one extends.
    The numbering below it is the database's primary key; the rest is `verify`'s to check."""
    query = f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY seq DESC LIMIT 1"
    row = conn.execute(query).fetchone()
    return None if row is None else _checked(row, None, path)


def _state_for(conn: sqlite3.Connection, path: Path, entry: Entry) -> LedgerState:
    """The state the rules judge `entry` by, each entry it rests on checked and replayed in
    order: every key grant, the entries about its request, and the expiry maximum in force
    when that request was made and now (the ones between were checked when appended, and
    decide nothing any more). Other entries change only other requests, so this is the whole
    ledger's verdict on `entry`, read by index: no cost grows with the ledger but the keys."""
    query = " UNION ".join(_RULES_READ) + " ORDER BY seq"
    state = LedgerState()
    for row in conn.execute(query, (entry.subject,)):
        earlier = _checked(row, None, path)
        try:
            state.apply(earlier)
        except RuleError as exc:
            raise LedgerError(
                path, f"does not verify, nothing appended: entry {earlier.seq}: {exc}"
            ) from None
    return state


def read_log(
    path: Path,
) -> tuple[list[tuple[object, ...]], list[tuple[int, bytes]], LogConfig | None]:
    """Every row, every signed checkpoint and the log's key, in one read transaction."""
    try:
        conn = _connect(path, create=False)
        try:
            conn.execute("BEGIN")
            if not _is_ledger(conn, path, create=False):
                return [], [], None
            return _select(conn), store.checkpoint_notes(conn), store.log_config(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LedgerError(path, f"cannot read the ledger: {exc}") from None
    except TransparencyError as exc:
        raise LedgerError(path, str(exc)) from None


@contextmanager
def locked(path: Path) -> Iterator[tuple[sqlite3.Connection, Replay]]:
    """The ledger under its write lock, verified; committed if the block returns normally."""
    try:
        conn = _connect(path, create=False)
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(path, f"cannot open the ledger: {exc}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        _is_ledger(conn, path, create=False)
        loaded = replay(_select(conn))
        if not loaded.result.ok:
            raise LedgerError(path, f"does not verify: {loaded.result.reason}")
        yield conn, loaded
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise LedgerError(path, f"nothing written: {exc}") from None
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def export_json(path: Path) -> dict[str, Any]:
    """Every row as stored, for publishing; anyone can run `ledger verify` on the file."""
    rows = read_rows(path)
    for position, row in enumerate(rows, 1):
        for name, value in zip(COLUMNS, row, strict=True):
            if not isinstance(value, str | int | None) or isinstance(value, bool):
                kind = "binary data (a BLOB)" if isinstance(value, bytes) else type(value).__name__
                raise LedgerError(path, f"row {position}: {name} is {kind}, not text or a number")
    entries = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    return {"format": FORMAT, "entries": entries}
