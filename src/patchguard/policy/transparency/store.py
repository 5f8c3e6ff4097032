"""The ledger's log key and signed checkpoints, in the ledger's own SQLite database.

A ledger becomes a transparency log with `patchguard ledger log-init --origin NAME`: that adds
two tables (an older ledger without them keeps working exactly as before, with no checkpoints),
`log` (one row: the origin, which is also the note key name, the log's public key and where its
private key file lives) and `checkpoints` (every signed checkpoint, by tree size). Both are
append-only like `entries`. From then on every append signs a checkpoint of the new tree in the
same transaction, so an entry is never committed without one. `PATCHGUARD_LOG_KEY` overrides
the stored key path (say, on a machine where the key is mounted elsewhere).

Each leaf is the canonical JSON (policy/chain.py `canonical`) of the whole signed entry, its
ten stored columns plus `"format": "patchguard.ledger/1"`: ASCII bytes anyone can hash and
re-verify with `ledger verify` on an export.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from patchguard.policy.chain import FORMAT, Entry, canonical
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


def log_config(conn: sqlite3.Connection) -> LogConfig | None:
    """The log's configuration, or None for a ledger that is not (yet) a transparency log."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if "log" not in tables:
        return None
    row = conn.execute("SELECT origin, public_key, key_path FROM log").fetchone()
    if row is None:
        return None
    origin, public_key, key_path = row
    if not all(isinstance(v, str) for v in row) or len(public_key) != 64:
        raise TransparencyError("the ledger's log table is damaged")
    return LogConfig(origin, bytes.fromhex(public_key), Path(key_path))


def sign_after_append(conn: sqlite3.Connection, entries: Sequence[Entry]) -> bytes | None:
    """Sign and store the checkpoint of `entries` (the whole ledger, in the caller's
    transaction); None if the ledger is not a transparency log."""
    config = log_config(conn)
    if config is None:
        return None
    checkpoint = Checkpoint(config.origin, len(entries), tree_of(entries).root())
    signed = sign_checkpoint(checkpoint, config.signer()).encoded
    conn.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (len(entries), signed))
    return signed


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
