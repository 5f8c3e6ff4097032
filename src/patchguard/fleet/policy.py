"""Applying the exception ledger the server serves: only a ledger that verifies entry by entry
(`policy.ledger.replay`), whose entry 1 is signed by the root key this host pins, and that
extends the ledger applied before (no entry dropped or rewritten) is written where the scan
reads it. A host never applies a policy the ledger does not show."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.atomic import write_atomic
from patchguard.fleet.client import FleetError
from patchguard.policy.chain import COLUMNS, FORMAT
from patchguard.policy.ledger import read_rows, replay

LEDGER_FILE = "fleet-ledger.json"
HASH = COLUMNS.index("hash")


@dataclass(frozen=True)
class Applied:
    path: Path
    entries: int
    new: int
    head: str | None


def _rows(document: dict[str, Any]) -> list[tuple[object, ...]]:
    entries = document.get("entries")
    if document.get("format") != FORMAT or not isinstance(entries, list):
        raise FleetError(f"the server's policy is not a {FORMAT} export")
    if not all(isinstance(e, dict) for e in entries):
        raise FleetError("the server's policy: entries is not a list of objects")
    return [tuple(e.get(name) for name in COLUMNS) for e in entries]


def _check_extends(old: list[tuple[object, ...]], new: list[tuple[object, ...]]) -> None:
    if len(new) < len(old):
        raise FleetError(
            f"the server's ledger has {len(new)} entries, fewer than the applied {len(old)}"
        )
    for position, (was, now) in enumerate(zip(old, new, strict=False), 1):
        if was[HASH] != now[HASH]:
            raise FleetError(f"the server's ledger rewrites entry {position}: not applied")


def apply_policy(directory: Path, document: dict[str, Any], root: str) -> Applied:
    """Verify the ledger export `document` and write it to the state directory."""
    rows = _rows(document)
    result = replay(rows).result
    if not result.ok:
        raise FleetError(f"the server's ledger does not verify: {result.reason}")
    if not rows or rows[0][COLUMNS.index("actor")] != root:
        signer = rows[0][COLUMNS.index("actor")] if rows else "nobody (it is empty)"
        raise FleetError(f"the server's ledger starts with an entry by {signer}, not root {root}")
    path = directory / LEDGER_FILE
    old = read_rows(path) if path.exists() else []
    _check_extends(old, rows)
    text = json.dumps({"format": FORMAT, "entries": document["entries"]}, indent=1) + "\n"
    write_atomic(path, text.encode(), 0o644)
    return Applied(path, len(rows), len(rows) - len(old), result.head)
