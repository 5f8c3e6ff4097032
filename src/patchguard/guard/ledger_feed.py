"""No change is quiet: every exception-ledger entry (request, decision, revocation, expiry,
policy change) reaches the guard's sinks once, in order, with the line `ledger show` prints.

The guard also writes the expiries down: an approved exception whose date has passed gets an
`expire` entry signed by the host key, so its end is announced like its start was. Which entry
was announced last is kept in a small state file (written to a temporary file, then renamed),
so entries appended while the guard was down are announced when it starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from patchguard.atomic import write_atomic
from patchguard.policy.exceptions import record_expiries
from patchguard.policy.ledger import LedgerError, load
from patchguard.signing import HostKey, KeyFileError

Event = dict[str, Any]


def state_path(ledger: Path) -> Path:
    """Where the last announced entry is kept: beside the ledger (same owner, same mode)."""
    return ledger.with_name(ledger.name + ".announced")


def read_seen(path: Path) -> int:
    """The seq of the last entry announced; 0 when nothing was (or the file is unreadable:
    announcing an entry twice is better than never)."""
    try:
        return max(0, int(path.read_text().strip() or 0))
    except (OSError, ValueError):
        return 0


def write_seen(path: Path, seq: int) -> None:
    write_atomic(path, f"{seq}\n".encode(), 0o600)


@dataclass
class LedgerFeed:
    ledger: Path
    key: Path
    _stamp: tuple[int, int] | None = None  # (mtime_ns, size) when last read
    _key_problem: str | None = None

    def changed(self) -> bool:
        """Whether the ledger file changed since it was last read (one stat: the guard asks
        every trigger interval; reading and verifying the ledger costs a signature check per
        entry)."""
        try:
            st = self.ledger.stat()
        except OSError:
            return False
        return (st.st_mtime_ns, st.st_size) != self._stamp

    def news(self, now: datetime | None = None) -> list[Event]:
        """Record the expiries that are due, then the events of every entry not announced yet.
        A ledger that does not verify yields nothing here (the guard reports it untrusted)."""
        events = self._expire(now)
        try:
            st = self.ledger.stat()
            replay = load(self.ledger)
        except (OSError, LedgerError):
            return events
        self._stamp = (st.st_mtime_ns, st.st_size)
        seen_path = state_path(self.ledger)
        seen = read_seen(seen_path)
        new = [(e, d) for e, d in zip(replay.entries, replay.descriptions, strict=True)]
        new = [(e, d) for e, d in new if e.seq > seen]
        events += [
            {
                "event": "ledger-entry",
                "seq": e.seq,
                "kind": e.kind,
                "subject": e.subject,
                "actor": e.actor,
                "time": e.time,
                "message": description,
            }
            for e, description in new
        ]
        if new:
            write_seen(seen_path, new[-1][0].seq)
        return events

    def _expire(self, now: datetime | None) -> list[Event]:
        if not self.ledger.exists():
            return []  # no ledger: nothing to expire, and no reason to create a host key
        try:
            key = HostKey.load_or_create(self.key)  # the host key: created on first use
            record_expiries(self.ledger, key, now)
        except KeyFileError as exc:
            problem = f"expiries are not written down: {exc}"
            if problem == self._key_problem:
                return []
            self._key_problem = problem
            return [{"event": "ledger-expiry-failed", "message": problem}]
        except (OSError, LedgerError):
            return []  # no ledger, or one that does not verify: reported by the scan
        self._key_problem = None
        return []
