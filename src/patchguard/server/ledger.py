"""The exception ledger as the server holds it: imported from a ledger that verifies, only
ever extended (an import that does not start with what the server already holds is refused),
and served to hosts as an export (`policy.ledger.export_json`'s shape) for them to verify.

A ledger that is a transparency log brings its log key and latest signed checkpoint along:
the checkpoint is checked (signed by the log's key, its root the entries' tree) before it is
stored, and the server serves it with the log's tiles (server/tlog.py). A later import must be
signed by the same log key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from patchguard.policy.chain import COLUMNS, FORMAT, Entry
from patchguard.policy.ledger import LedgerError, read_log, read_rows, replay
from patchguard.policy.transparency import TransparencyError, store
from patchguard.policy.transparency.checkpoint import open_checkpoint
from patchguard.server.db import LedgerCheckpoint, LedgerEntry, LedgerLog


def _stored(session: Session) -> list[LedgerEntry]:
    return list(session.scalars(select(LedgerEntry).order_by(LedgerEntry.seq)))


Rows = list[tuple[object, ...]]


def _read(path: Path) -> tuple[Rows, list[tuple[int, bytes]], store.LogConfig | None]:
    """Rows, checkpoints and log key; an export has only rows."""
    return (read_rows(path), [], None) if path.suffix == ".json" else read_log(path)


def import_ledger(session: Session, path: Path) -> tuple[int, int]:
    """Add the entries of the ledger at `path` (SQLite or a .json export) that the server
    does not hold yet: (entries added, entries held). LedgerError if it does not verify or
    is not an extension of the held ledger."""
    rows, notes, config = _read(path)
    loaded = replay(rows)
    if not loaded.result.ok:
        raise LedgerError(path, f"does not verify, nothing imported: {loaded.result.reason}")
    held = _stored(session)
    for entry, row in zip(held, rows, strict=False):
        if entry.hash != row[COLUMNS.index("hash")]:
            raise LedgerError(
                path, f"entry {entry.seq} differs from the server's: a rewritten ledger"
            )
    if len(rows) < len(held):
        raise LedgerError(path, f"has {len(rows)} entries, the server already {len(held)}")
    new = rows[len(held) :]
    session.add_all(LedgerEntry(**dict(zip(COLUMNS, row, strict=True))) for row in new)
    if config is not None and notes:
        _import_checkpoint(session, path, loaded.entries, notes[-1], config)
    return len(new), len(held) + len(new)


def _import_checkpoint(
    session: Session,
    path: Path,
    entries: Sequence[Entry],
    latest: tuple[int, bytes],
    config: store.LogConfig,
) -> None:
    """Keep the log's key (the same one at every import) and its latest checkpoint, once
    it is shown to be signed by that key over exactly these entries."""
    key = config.public_key.hex()
    known = session.get(LedgerLog, 1)
    if known is not None and (known.origin, known.public_key) != (config.origin, key):
        raise LedgerError(path, f"is the log {config.verifier.vkey}, not the server's log")
    size, note = latest
    try:
        checkpoint = open_checkpoint(note, config.verifier).checkpoint
    except TransparencyError as exc:
        raise LedgerError(path, f"checkpoint {size}: {exc}") from None
    tree = store.tree_of(entries)
    if checkpoint.size != size or size > tree.size or tree.root(size) != checkpoint.root:
        raise LedgerError(path, f"checkpoint {size} does not match the ledger's entries")
    if known is None:
        session.add(LedgerLog(id=1, origin=config.origin, public_key=key))
    if session.get(LedgerCheckpoint, size) is None:
        session.add(LedgerCheckpoint(size=size, note=note))


def export(session: Session) -> dict[str, Any]:
    entries = [{name: getattr(e, name) for name in COLUMNS} for e in _stored(session)]
    return {"format": FORMAT, "entries": entries}
