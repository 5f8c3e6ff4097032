"""The guard's own memory across runs, signed with the host key: the baseline digest and the
ledger head it last accepted, and how its last run ended.

One JSON file, `guard-state.json` in the guard's state directory (the config's `state`, else
beside the spool), written atomically. A state file that is missing is a first start; one
that does not verify with the host key is tampering (the caller reports it and starts afresh,
so a forged file is never believed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from patchguard.atomic import write_atomic
from patchguard.safe_read import InputError, parse_json, read_bounded
from patchguard.signing import HostKey, fingerprint_of, verify_signature

FORMAT = "patchguard.guard-state/1"
NAME = "guard-state.json"


@dataclass(frozen=True)
class GuardState:
    baseline_sha256: str | None = None  # the baseline accepted last (at start or a rotation)
    ledger_seq: int = 0  # the ledger head accepted last: entries and the last one's hash
    ledger_hash: str | None = None
    run: dict[str, Any] = field(default_factory=dict)  # the current or last run (stops.py)

    def with_run(self, **changes: Any) -> GuardState:
        return replace(self, run={**self.run, **changes})


def canonical(doc: dict[str, Any]) -> bytes:
    """The body a guard file's signature covers: its fields, sorted, without spaces."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def signed_text(form: str, body: bytes) -> bytes:
    """What is signed: the file's format line, then its canonical body."""
    return form.encode() + b"\n" + body


def write_signed(path: Path, form: str, name: str, body: bytes, key: HostKey) -> None:
    """A root-only file holding `body` under `name`, signed by the host key (atomically)."""
    doc = {
        "format": form,
        name: json.loads(body),
        "key": key.fingerprint(),
        "signature": key.sign(signed_text(form, body)).hex(),
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)


def _body(state: GuardState) -> bytes:
    return canonical(
        {
            "baseline_sha256": state.baseline_sha256,
            "ledger_seq": state.ledger_seq,
            "ledger_hash": state.ledger_hash,
            "run": state.run,
        }
    )


def save(path: Path, state: GuardState, key: HostKey) -> None:
    write_signed(path, FORMAT, "state", _body(state), key)


def _state_of(raw: Any) -> GuardState:
    """ValueError/TypeError/KeyError on anything but the shape save() writes."""
    run = raw["run"]
    seq, head, base = raw["ledger_seq"], raw["ledger_hash"], raw["baseline_sha256"]
    if not isinstance(run, dict) or not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("run or ledger_seq has the wrong type")
    if not all(isinstance(v, str | None) for v in (head, base)):
        raise ValueError("ledger_hash or baseline_sha256 is not text")
    return GuardState(base, max(0, seq), head, run)


def load(path: Path, public_key: bytes) -> tuple[GuardState | None, str | None]:
    """(state, None) when it verifies; (None, None) when there is none; (None, why) when it
    is there and cannot be believed."""
    if not path.exists() and not path.is_symlink():
        return None, None
    try:
        doc = parse_json(read_bounded(path, "signature"), str(path))
        state = _state_of(doc["state"])
        signature = bytes.fromhex(str(doc["signature"]))
    except InputError as exc:
        return None, f"{path}: unreadable: {exc.reason}"
    except (ValueError, TypeError, KeyError) as exc:
        return None, f"{path}: not a guard state file: {exc}"
    if doc.get("format") != FORMAT:
        return None, f"{path}: not a guard state file ({FORMAT})"
    if not verify_signature(public_key, signed_text(FORMAT, _body(state)), signature):
        signer = str(doc.get("key", "?"))[:16]
        mine = fingerprint_of(public_key)
        return None, f"{path}: not signed by this host's key {mine} (says {signer})"
    return state, None
