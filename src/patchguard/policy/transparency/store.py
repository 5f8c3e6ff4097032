"""The ledger's log key and signed checkpoints, in the ledger's own SQLite database.

A ledger becomes a transparency log with `patchguard ledger log-init --origin NAME`: that adds
two tables (an older ledger without them keeps working exactly as before, with no checkpoints),
`log` (one row: the origin, which is also the note key name, the log's public key and where its
private key file lives) and `checkpoints` (every signed checkpoint, by tree size). Both are
append-only like `entries`. From then on every append signs a checkpoint of the new tree in the
same transaction, so an entry is never committed without one. `PATCHGUARD_LOG_KEY` overrides
the stored key path (say, on a machine where the key is mounted elsewhere).

The tree itself is kept too, in a third append-only table, `tree`: the hash of every complete
subtree (level, index), the leaves at level 0. An append hashes the new leaf and the subtrees
it completes and reads the O(log n) hashes of the right edge for the new root, all in the
append's transaction. A log made before the table existed gets it filled from its entries at
its next append or `log-init`, once, in that transaction. The table is a cache for signing:
`ledger verify` rebuilds the tree from the entries and compares (`tree_mismatch`).

Each leaf is the canonical JSON (policy/chain.py `canonical`) of the whole signed entry, its
ten stored columns plus `"format": "patchguard.ledger/1"`: ASCII bytes anyone can hash and
re-verify with `ledger verify` on an export.

A rotated log key (`patchguard ledger rotate-log-key`, see rotation.py) goes in a fourth
append-only table, `log_keys` (after which tree size it signs, its public key and key file):
the `log` row keeps the first key, the newest `log_keys` row is the key that signs now.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from patchguard.policy.chain import COLUMNS, FORMAT, Entry, canonical, entry_from_row
from patchguard.policy.transparency import TransparencyError, merkle
from patchguard.policy.transparency.checkpoint import Checkpoint, sign_checkpoint
from patchguard.policy.transparency.note import ED25519, Signer, Verifier, check_name
from patchguard.signing import HostKey, KeyFileError

LOG_KEY_ENV = "PATCHGUARD_LOG_KEY"
_APPEND_ONLY = "SELECT RAISE(ABORT, 'the patchguard ledger is append-only')"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "origin TEXT NOT NULL, public_key TEXT NOT NULL, key_path TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note BLOB NOT NULL)",
    *(
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb} BEFORE {verb.upper()} ON {table} "
        f"BEGIN {_APPEND_ONLY}; END"
        for table in ("log", "checkpoints")
        for verb in ("update", "delete")
    ),
)
_TREE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tree (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID",
    *(
        f"CREATE TRIGGER IF NOT EXISTS tree_no_{verb} BEFORE {verb.upper()} ON tree "
        f"BEGIN {_APPEND_ONLY}; END"
        for verb in ("update", "delete")
    ),
)


def leaf_bytes(entry: Entry) -> bytes:
    return canonical({"format": FORMAT, **entry.as_dict()}).encode("ascii")


def tree_of(entries: Sequence[Entry]) -> merkle.MemoryTree:
    return merkle.MemoryTree([merkle.leaf_hash(leaf_bytes(e)) for e in entries])


@dataclass(frozen=True)
class LogConfig:
    origin: str
    public_key: bytes
    key_path: Path

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.origin, ED25519, self.public_key)

    def signer(self) -> Signer:
        path = Path(os.environ.get(LOG_KEY_ENV) or self.key_path)
        try:
            key = HostKey.load(path)
        except KeyFileError as exc:
            raise TransparencyError(f"the log key {exc}") from None
        if key.public_key_bytes() != self.public_key:
            raise TransparencyError(
                f"{path}: not the log's key (the log's is {self.verifier.vkey})"
            )
        return Signer(self.origin, ED25519, key)


_KEYS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log_keys (after INTEGER PRIMARY KEY, "
    "public_key TEXT NOT NULL, key_path TEXT NOT NULL)",
    *(
        f"CREATE TRIGGER IF NOT EXISTS log_keys_no_{verb} BEFORE {verb.upper()} ON log_keys "
        f"BEGIN {_APPEND_ONLY}; END"
        for verb in ("update", "delete")
    ),
)


def log_config(conn: sqlite3.Connection) -> LogConfig | None:
    """The log's configuration (with the key that signs now), or None for a ledger that is
    not (yet) a transparency log."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if "log" not in tables:
        return None
    row = conn.execute("SELECT origin, public_key, key_path FROM log").fetchone()
    if row is None:
        return None
    origin, public_key, key_path = row
    if "log_keys" in tables:
        newest = "SELECT public_key, key_path FROM log_keys ORDER BY after DESC LIMIT 1"
        public_key, key_path = conn.execute(newest).fetchone() or (public_key, key_path)
    values = (origin, public_key, key_path)
    if not all(isinstance(v, str) for v in values) or len(public_key) != 64:
        raise TransparencyError("the ledger's log table is damaged")
    return LogConfig(origin, bytes.fromhex(public_key), Path(key_path))


def add_log_key(conn: sqlite3.Connection, after: int, key: HostKey, key_path: Path) -> None:
    """Sign the checkpoints of trees over `after` entries with `key` (in the caller's
    transaction, the one that appended the rotation entry `after`)."""
    for statement in _KEYS_SCHEMA:
        conn.execute(statement)
    values = (after, key.public_key_bytes().hex(), str(key_path.resolve()))
    conn.execute("INSERT INTO log_keys (after, public_key, key_path) VALUES (?, ?, ?)", values)


class StoredTree:
    """The `tree` table as a merkle.HashSource, extended in the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def size(self) -> int:
        row = self._conn.execute("SELECT max(idx) FROM tree WHERE level = 0").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def complete(self, level: int, index: int) -> bytes:
        row = self._conn.execute(
            "SELECT hash FROM tree WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None or not isinstance(row[0], bytes) or len(row[0]) != merkle.HASH_SIZE:
            raise TransparencyError(f"the ledger's tree has no hash {index} at level {level}")
        return row[0]

    def append(self, leaf: bytes, index: int) -> None:
        """Add leaf `index` and every subtree it completes (a binary carry up the right edge)."""
        level, node = 0, leaf
        while True:
            self._conn.execute("INSERT INTO tree VALUES (?, ?, ?)", (level, index, node))
            if not index & 1:
                return
            node = merkle.node_hash(self.complete(level, index - 1), node)
            level, index = level + 1, index >> 1

    def root(self, size: int) -> bytes:
        return merkle.subtree_root(self, 0, size)


def _entry(row: Sequence[object]) -> Entry:
    entry = entry_from_row(row, 0)
    if isinstance(entry, str):
        raise TransparencyError(f"cannot hash {entry}")
    return entry


def catch_up(conn: sqlite3.Connection) -> StoredTree:
    """The stored tree, extended by every entry it does not hold yet: the one an append just
    inserted, or all of them the first time (a log older than the table)."""
    for statement in _TREE_SCHEMA:
        conn.execute(statement)
    tree = StoredTree(conn)
    start = tree.size
    rows = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM entries WHERE seq > ? ORDER BY seq", (start,)
    )
    for index, row in enumerate(rows, start):
        entry = _entry(row)
        if entry.seq != index + 1:
            raise TransparencyError(f"entry {entry.seq} follows a tree of {index} leaves")
        tree.append(merkle.leaf_hash(leaf_bytes(entry)), index)
    return tree


def sign_after_append(conn: sqlite3.Connection, entries: Sequence[Entry] | int) -> bytes | None:
    """Sign and store the checkpoint of the whole ledger (in the caller's transaction), which
    must hold `entries` (the entries, or just their count); None if it is not a log."""
    config = log_config(conn)
    if config is None:
        return None
    size = entries if isinstance(entries, int) else len(entries)
    tree = catch_up(conn)
    if tree.size != size:
        raise TransparencyError(f"the ledger's tree has {tree.size} leaves, not {size}")
    checkpoint = Checkpoint(config.origin, size, tree.root(size))
    signed = sign_checkpoint(checkpoint, config.signer()).encoded
    conn.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (size, signed))
    return signed


def _hashes_of(size: int) -> int:
    """How many complete subtrees a tree of `size` leaves has."""
    return sum(size >> level for level in range(size.bit_length()))


def tree_mismatch(conn: sqlite3.Connection, tree: merkle.MemoryTree) -> str | None:
    """Why the stored tree (if any) is not `tree` rebuilt from the entries, or the tree of a
    prefix of them (entries added without an append are taken in at the next one); or None."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if "tree" not in tables:
        return None
    count, leaves = 0, 0
    for level, index, stored in conn.execute("SELECT level, idx, hash FROM tree"):
        count += 1
        leaves = max(leaves, index + 1) if level == 0 else leaves
        try:
            expected = tree.complete(level, index)
        except merkle.ProofError:
            return f"the stored tree has a hash {index} at level {level} that no entry gives"
        if stored != expected:
            return f"the stored tree hash {index} at level {level} does not match the entries"
    if count != _hashes_of(leaves):
        return f"the stored tree lacks hashes of its {leaves} leaves"
    return None


def configure(conn: sqlite3.Connection, origin: str, key: HostKey, key_path: Path) -> None:
    """Make the ledger a log (in the caller's transaction); its first checkpoint follows."""
    check_name(origin)
    for statement in _SCHEMA:
        conn.execute(statement)
    existing = log_config(conn)
    if existing is not None:
        raise TransparencyError(f"already a transparency log: {existing.verifier.vkey}")
    values = (origin, key.public_key_bytes().hex(), str(key_path.resolve()))
    conn.execute("INSERT INTO log (id, origin, public_key, key_path) VALUES (1, ?, ?, ?)", values)


def checkpoint_notes(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
    """Every stored checkpoint (size, signed note), smallest first; none for a plain ledger."""
    if log_config(conn) is None:
        return []
    rows = conn.execute("SELECT size, note FROM checkpoints ORDER BY size").fetchall()
    if not all(isinstance(s, int) and isinstance(n, bytes) for s, n in rows):
        raise TransparencyError("the ledger's checkpoints table is damaged")
    return [(s, n) for s, n in rows]
