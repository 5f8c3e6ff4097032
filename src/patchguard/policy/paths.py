"""Where the exception ledger lives by default: apart from ledger.py, so that a scan finds out
whether there is a ledger at all without importing what reads one."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LEDGER = Path("/var/lib/patchguard/ledger.db")
LEDGER_ENV = "PATCHGUARD_LEDGER"


def default_ledger_path() -> Path:
    """`PATCHGUARD_LEDGER` if set (and not empty), else DEFAULT_LEDGER."""
    return Path(os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER)
