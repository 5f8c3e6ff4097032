"""The guard config's `[transparency]` table, read and checked (no I/O: config loading
imports only this; the gate itself is gate.py).

    [transparency]
    log_vkey = "ledger.example.org/exceptions+1a2b3c4d+AV..."  # `patchguard ledger vkey`
    witnesses = ["witness.example/w1+...", "witness.example/w2+..."]  # `witness vkey`
    quorum = 2                                   # cosignatures needed, 1..len(witnesses)
    checkpoint = "https://ledger.example.org/log"  # where `ledger publish` output is served
    state_dir = "/var/lib/patchguard"            # the last witnessed checkpoint accepted
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.policy.transparency import note

DEFAULT_STATE = Path("/var/lib/patchguard")


@dataclass(frozen=True)
class GateSettings:
    """The guard config's `[transparency]` table."""

    log: note.Verifier  # the log's key (type 0x01); its name is the log's origin
    witnesses: tuple[note.Verifier, ...]  # cosignature/v1 keys (type 0x04), distinct
    quorum: int  # 1 <= quorum <= len(witnesses)
    checkpoint: str  # URL or directory where the log is published (its `checkpoint` file)
    state_dir: Path = DEFAULT_STATE  # the last witnessed checkpoint accepted, under witnessed/

    def describe(self) -> str:
        names = ", ".join(w.name for w in self.witnesses)
        return (
            f"exceptions apply only under a checkpoint of {self.log.name} cosigned by "
            f"{self.quorum} of {len(self.witnesses)} witnesses ({names}), from {self.checkpoint}"
        )


UNWITNESSED = (
    "no [transparency] table: unwitnessed mode, the ledger's exceptions apply without any "
    "witness having seen them"
)


def _vkey(value: object, kind: int, key: str, path: Path) -> note.Verifier:
    if not isinstance(value, str):
        raise ValueError(f"{path}: transparency.{key}: expected a verifier key string")
    try:
        verifier = note.parse_vkey(value)
    except note.NoteError as exc:
        raise ValueError(f"{path}: transparency.{key}: {exc}") from None
    if verifier.kind != kind:
        wanted = "a log key (type 0x01)" if kind == note.ED25519 else "a witness key (type 0x04)"
        raise ValueError(f"{path}: transparency.{key}: not {wanted}")
    return verifier


def _witnesses(value: object, path: Path) -> tuple[note.Verifier, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{path}: transparency.witnesses: expected a list of witness keys")
    keys = tuple(_vkey(v, note.COSIGNATURE, f"witnesses[{i}]", path) for i, v in enumerate(value))
    if len({k.vkey for k in keys}) != len(keys) or len({k.name for k in keys}) != len(keys):
        raise ValueError(f"{path}: transparency.witnesses: a witness is listed twice")
    return keys


def gate_settings(table: Mapping[str, Any], path: Path) -> GateSettings:
    """The `[transparency]` table; ValueError `<file>: transparency.<key>: <what>` if wrong."""
    allowed = {"log_vkey", "witnesses", "quorum", "checkpoint", "state_dir"}
    for key in sorted(set(table) - allowed):
        raise ValueError(f"{path}: transparency.{key}: unknown key")
    for key in sorted(allowed - {"state_dir"} - set(table)):
        raise ValueError(f"{path}: transparency.{key}: missing")
    log = _vkey(table["log_vkey"], note.ED25519, "log_vkey", path)
    witnesses = _witnesses(table["witnesses"], path)
    quorum = table["quorum"]
    if not isinstance(quorum, int) or isinstance(quorum, bool):
        raise ValueError(f"{path}: transparency.quorum: expected a whole number")
    if not 1 <= quorum <= len(witnesses):
        raise ValueError(
            f"{path}: transparency.quorum: {quorum} must be from 1 to the "
            f"{len(witnesses)} witnesses listed"
        )
    where, state = table["checkpoint"], table.get("state_dir", str(DEFAULT_STATE))
    if not isinstance(where, str) or not where:
        raise ValueError(f"{path}: transparency.checkpoint: expected a URL or directory")
    if not isinstance(state, str) or not state:
        raise ValueError(f"{path}: transparency.state_dir: expected a directory")
    return GateSettings(log, witnesses, quorum, where, Path(state))
