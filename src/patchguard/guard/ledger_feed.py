"""No change is quiet: every exception-ledger entry (request, decision, revocation, expiry,
policy change) reaches the guard's sinks once, in order, with the line `ledger show` prints.

The guard also writes the expiries down: an approved exception whose date has passed gets an
`expire` entry signed by the host key, so its end is announced like its start was. Which entry
was announced last is kept in a small state file (written to a temporary file, then renamed),
so entries appended while the guard was down are announced when it starts again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from patchguard.atomic import write_atomic
from patchguard.policy.chain import Entry
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
    return read_seen_head(path)[0]


def read_seen_head(path: Path) -> tuple[int, str | None]:
    """The seq and hash of the last entry announced (`SEQ HASH`; older files hold the seq)."""
    try:
        fields = path.read_text()[:200].split()
        return max(0, int(fields[0])), fields[1] if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return 0, None


def write_seen(path: Path, seq: int, head: str = "") -> None:
    write_atomic(path, f"{seq} {head}".strip().encode() + b"\n", 0o600)


def rewritten(entries: Sequence[Entry], seen: int, seen_hash: str | None) -> str | None:
    """Why the ledger is not the one whose entries were announced up to `seen`, or None.
    Append-only means every announced entry is still there, with the same hash."""
    if seen > len(entries):
        return (
            f"the ledger has {len(entries)} entries, fewer than the {seen} already announced: "
            "it was cut short, emptied or rebuilt"
        )
    if seen and seen_hash and entries[seen - 1].hash != seen_hash:
        return (
            f"entry {seen} is not the entry announced (hash {entries[seen - 1].hash[:16]}, "
            f"announced {seen_hash[:16]}): the ledger was rebuilt"
        )
    return None


@dataclass
class LedgerFeed:
    ledger: Path
    key: Path
    _stamp: tuple[int, int] | None = None  # (mtime_ns, size) when last read
    _key_problem: str | None = None
    _gone_reported: bool = False

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
        seen_path = state_path(self.ledger)
        seen, seen_hash = read_seen_head(seen_path)
        try:
            st = self.ledger.stat()
            replay = load(self.ledger)
        except (OSError, LedgerError) as exc:
            return events + self._gone(seen, exc)
        self._gone_reported = False
        self._stamp = (st.st_mtime_ns, st.st_size)
        why = rewritten(replay.entries, seen, seen_hash)
        if why is not None:  # announced, then the new ledger's entries are announced anew
            events.append({"event": "ledger-rewritten", "message": why, "announced": seen})
            seen = 0
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
        if new or why is not None:
            last = replay.entries[-1] if replay.entries else None
            write_seen(seen_path, last.seq if last else 0, last.hash if last else "")
        return events

    def _gone(self, seen: int, exc: Exception) -> list[Event]:
        """A ledger whose entries were announced and that is now missing: said once (one that
        does not verify is reported by the scan)."""
        missing = isinstance(exc, FileNotFoundError) or (
            isinstance(exc, LedgerError) and exc.reason.startswith("no ledger here")
        )
        if not seen or not missing or self._gone_reported:
            return []
        self._gone_reported = True
        message = f"{self.ledger}: {seen} entries were announced and the ledger is gone"
        return [{"event": "ledger-rewritten", "message": message, "announced": seen}]

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
