"""The exception ledger as the server holds it: imported from a ledger that verifies, only
ever extended (an import that does not start with what the server already holds is refused),
and served to hosts as an export (`policy.ledger.export_json`'s shape) for them to verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from patchguard.policy.chain import COLUMNS, FORMAT
from patchguard.policy.ledger import LedgerError, read_rows, replay
from patchguard.server.db import LedgerEntry


def _stored(session: Session) -> list[LedgerEntry]:
    return list(session.scalars(select(LedgerEntry).order_by(LedgerEntry.seq)))


def import_ledger(session: Session, path: Path) -> tuple[int, int]:
    """Add the entries of the ledger at `path` (SQLite or a .json export) that the server
    does not hold yet: (entries added, entries held). LedgerError if it does not verify or
    is not an extension of the held ledger."""
    rows = read_rows(path)
    result = replay(rows).result
    if not result.ok:
        raise LedgerError(path, f"does not verify, nothing imported: {result.reason}")
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
    return len(new), len(held) + len(new)


def export(session: Session) -> dict[str, Any]:
    entries = [{name: getattr(e, name) for name in COLUMNS} for e in _stored(session)]
    return {"format": FORMAT, "entries": entries}
