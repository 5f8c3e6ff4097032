"""What the guard holds on to across runs, in its signed state (state.py): the baseline digest
(changed only through a rotation request made with the CLI), the ledger head it last
accepted (every later ledger must extend it), and the record of its runs (stops.py).

A rotation request is `baseline-rotation.json` in the state directory, written by
`patchguard baseline rotate` (or `baseline create --rotate`): the baseline's path, the digest
it rotates from and to, a reason and a time, signed with the host key, in a file owned by
root that nobody else may write. The guard takes it only for the file and digests it names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.findings import Disposition, Finding
from patchguard.guard import state as guard_state
from patchguard.guard import stops
from patchguard.guard.config import GuardConfig
from patchguard.guard.tamper import BaselinePin
from patchguard.safe_read import InputError, parse_json, read_bounded
from patchguard.signing import HostKey, KeyFileError, verify_signature

ROTATION = "baseline-rotation.json"
ROTATION_FORMAT = "patchguard.baseline-rotation/1"
Announce = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Rotation:
    path: str
    before: str | None  # the digest rotated from (None: whatever the guard had pinned)
    after: str
    reason: str
    time: float


def _rotation_body(r: Rotation) -> bytes:
    doc = {"path": r.path, "from": r.before, "to": r.after, "reason": r.reason, "time": r.time}
    return guard_state.canonical(doc)


def write_rotation(directory: Path, rotation: Rotation, key: HostKey) -> Path:
    path = directory / ROTATION
    guard_state.write_signed(path, ROTATION_FORMAT, "request", _rotation_body(rotation), key)
    return path


def _owned_safely(path: Path) -> bool:
    """Owned by root (when the guard is root), writable by nobody else."""
    st = path.lstat()
    return (os.geteuid() != 0 or st.st_uid == 0) and not st.st_mode & 0o022


def read_rotation(directory: Path, public_key: bytes) -> Rotation | None:
    """The rotation request, if there is one that verifies (anything else is no request)."""
    path = directory / ROTATION
    try:
        if not _owned_safely(path):
            return None
        doc = parse_json(read_bounded(path, "signature"), str(path))
        req = doc["request"]
        before = req["from"]
        rotation = Rotation(
            str(req["path"]),
            None if before is None else str(before),
            str(req["to"]),
            str(req["reason"])[:500],
            float(req["time"]),
        )
        signature = bytes.fromhex(str(doc["signature"]))
    except (OSError, InputError, KeyError, TypeError, ValueError):
        return None
    signed = guard_state.signed_text(ROTATION_FORMAT, _rotation_body(rotation))
    return rotation if verify_signature(public_key, signed, signature) else None


def _finding(technique: str, subject: Path, summary: str, evidence: dict[str, Any]) -> Finding:
    from patchguard.techniques import TECHNIQUES

    t = TECHNIQUES[technique]
    disposition = Disposition.SUSPICIOUS if technique == "ledger-locked" else Disposition.TAMPERING
    return Finding(
        "guard", technique, t.severity, str(subject), summary, disposition, t.attack_id, evidence
    )


class GuardMemory:
    """The signed state of this host's guard, read at start and kept up to date."""

    def __init__(self, config: GuardConfig, announce: Announce) -> None:
        self.config, self.announce = config, announce
        self.path = config.state_dir / guard_state.NAME
        self.key: HostKey | None = None
        self.problem: str | None = None
        try:
            self.key = HostKey.load(config.key)
        except KeyFileError as exc:  # no host key yet: nothing is remembered, and that is said
            self.problem = f"the guard keeps no state: {exc}"
        self.state = guard_state.GuardState()
        self.previous: dict[str, Any] = {}
        if self.key is not None:
            loaded, why = guard_state.load(self.path, self.key.public_key_bytes())
            self.state, self.problem = loaded or self.state, why
            self.previous = dict(self.state.run)

    def baseline_pin(self) -> BaselinePin | None:
        path = self.config.baseline
        if path is None:
            return None
        if self.state.baseline_sha256 is not None:
            return BaselinePin(path, self.state.baseline_sha256)
        return BaselinePin.take(path)

    def save(self, **changes: Any) -> None:
        from dataclasses import replace

        self.state = replace(self.state, **changes)
        if self.key is not None:
            guard_state.save(self.path, self.state, self.key)

    def start(self, pin: BaselinePin | None) -> list[Finding]:
        """Say how the last run ended, and write this one down; a state that does not verify
        is a finding (the pins it held are gone, which is what a forger would want)."""
        found = []
        if self.problem is not None and self.key is not None:
            found.append(_finding("guard-state-untrusted", self.path, self.problem, {}))
        elif self.problem is not None:
            self.announce({"event": "state-unavailable", "message": self.problem})
        said = stops.last_run_event(self.previous)
        if said is not None:
            self.announce(said)
        digest = pin.digest if pin is not None else self.state.baseline_sha256
        if self.key is not None:
            self.save(baseline_sha256=digest, run=stops.run_started())
        return found

    # --- the baseline ----------------------------------------------------------------------
    def rotation_for(self, pin: BaselinePin, now: str) -> Rotation | None:
        """A verified request that rotates `pin` to the digest `now`, used up if so."""
        if self.key is None:
            return None
        rotation = read_rotation(self.config.state_dir, self.key.public_key_bytes())
        if rotation is None or rotation.path != str(pin.path) or rotation.after != now:
            return None
        if rotation.before is not None and rotation.before != pin.digest:
            return None
        (self.config.state_dir / ROTATION).unlink(missing_ok=True)
        self.save(baseline_sha256=now)
        return rotation

    # --- the ledger ------------------------------------------------------------------------
    def pinned_head(self) -> tuple[int, str] | None:
        if self.state.ledger_hash is not None and self.state.ledger_seq > 0:
            return self.state.ledger_seq, self.state.ledger_hash
        return self.config.ledger_head

    def ledger_check(self) -> list[Finding]:
        """The ledger against the head last accepted: it must hold that entry where it was;
        a longer ledger that does is accepted, and its head pinned."""
        from patchguard.policy.ledger import LedgerError, load

        ledger = self.config.ledger
        if ledger is None:
            return []
        seq, digest = self.pinned_head() or (0, "")
        evidence: dict[str, Any] = {"path": str(ledger), "pinned_seq": seq, "pinned_hash": digest}
        try:
            entries = load(ledger).entries
        except (LedgerError, OSError) as exc:
            return self._unreadable(ledger, str(exc), evidence)
        if seq and (len(entries) < seq or entries[seq - 1].hash != digest):
            held = f"{len(entries)} entries" if entries else "no entries (it is empty)"
            why = f"the ledger holds {held} and not entry {seq} with hash {digest[:16]}: it was "
            why += "cut short, emptied or rebuilt"
            return [
                _finding("ledger-head-lost", ledger, why, {**evidence, "entries": len(entries)})
            ]
        if not entries:
            return []
        last = entries[-1]
        if last.seq != self.state.ledger_seq or last.hash != self.state.ledger_hash:
            self.save(ledger_seq=last.seq, ledger_hash=last.hash)
        return []

    def _unreadable(self, ledger: Path, reason: str, evidence: dict[str, Any]) -> list[Finding]:
        if "locked" in reason:
            why = f"the ledger could not be read: another process holds its lock ({reason})"
            return [_finding("ledger-locked", ledger, why, evidence)]
        if not evidence["pinned_seq"]:
            return []  # nothing accepted yet: the ledger feed and the scan say what is wrong
        if "no ledger here" in reason or "No such file" in reason:
            why = f"the ledger is gone; it had {evidence['pinned_seq']} entries"
            return [_finding("ledger-head-lost", ledger, why, evidence)]
        why = f"the ledger does not extend the head the guard accepted: {reason}"
        return [_finding("ledger-head-lost", ledger, why, evidence)]


def rotation_now(baseline: Path, before: str | None, after: str, reason: str) -> Rotation:
    return Rotation(str(baseline), before, after, reason, time.time())
