"""Log-key rotation: the log moves to a new signing key, and verifiers follow only through
the ledger.

A rotation is a ledger entry (kind "policy", `{"policy": "log_key", "from": OLD, "to": NEW,
"log_signature": ...}`, both verifier keys under the log's origin), signed by a key with the
policy role (the ledger owner) and carrying the old log key's signature of
`patchguard.log-key/1\\nOLD\\nNEW\\n` (policy/rules.py checks both). `rotate` appends it and,
in the same transaction, makes NEW the key that signs: the checkpoint of the tree that ends
with the rotation entry (size r) is still signed by OLD, so the old key itself vouches for a
tree holding its successor; every later checkpoint (sizes over r) is signed by NEW.

A verifier pins one key. `periods` reads the rotations out of the ledger's entries and gives
the pinned key and each successor with the sizes it may sign (OLD up to r, NEW after r); a
checkpoint signed by a key no rotation announced, or by a key outside its sizes (a retired
key signing on), does not open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from patchguard.policy import ledger
from patchguard.policy.chain import Entry
from patchguard.policy.ledger import LedgerError
from patchguard.policy.rules import rotation_statement
from patchguard.policy.transparency import TransparencyError, note, store
from patchguard.policy.transparency.checkpoint import SignedCheckpoint, parse_checkpoint
from patchguard.policy.transparency.note import NoteError, Verifier
from patchguard.signing import HostKey

NO_END = 1 << 63  # larger than any tree size


@dataclass(frozen=True)
class Rotation:
    seq: int  # the rotation entry: trees over this many entries are signed by `new`
    old: str
    new: str


@dataclass(frozen=True)
class Period:
    key: Verifier
    after: int  # it signs trees of sizes after..until (after exclusive; 0: from the start)
    until: int

    def covers(self, size: int) -> bool:
        return self.after < size <= self.until


def rotations(entries: Sequence[Entry]) -> list[Rotation]:
    """The log-key rotations among verified ledger entries, in order."""
    out = []
    for e in entries:
        data = e.data
        if e.kind == "policy" and data.get("policy") == "log_key":
            out.append(Rotation(e.seq, str(data["from"]), str(data["to"])))
    return out


def periods(pinned: Verifier, entries: Sequence[Entry]) -> tuple[Period, ...]:
    """The pinned key and its announced successors, each with the tree sizes it signs. A key
    pinned before any rotation signs up to the first one; one pinned later (a host configured
    after a rotation) signs from the rotation that announced it."""
    chain: list[Period] = []
    for r in rotations(entries):
        if not chain and r.old == pinned.vkey:
            chain.append(Period(pinned, 0, NO_END))
        if not chain and r.new == pinned.vkey:
            chain.append(Period(pinned, r.seq, NO_END))
            continue
        if chain and r.old == chain[-1].key.vkey:
            last = chain[-1]
            chain[-1] = Period(last.key, last.after, r.seq)
            chain.append(Period(note.parse_vkey(r.new), r.seq, NO_END))
    return tuple(chain) or (Period(pinned, 0, NO_END),)


def open_announced(
    message: bytes, pinned: Verifier, entries: Sequence[Entry]
) -> tuple[SignedCheckpoint, Verifier]:
    """The checkpoint and the key that signed it: the pinned key or a successor the ledger's
    `entries` announced, for a tree size that key signs. NoteError otherwise."""
    chain = periods(pinned, entries)
    opened = note.open_note(message, [p.key for p in chain])
    checkpoint = parse_checkpoint(opened.text)
    for p in chain:
        if opened.signed_by(p.key) is not None and p.covers(checkpoint.size):
            return SignedCheckpoint(opened, checkpoint), p.key
    signers = ", ".join(p.key.vkey for p in chain if opened.signed_by(p.key) is not None)
    raise NoteError(
        f"checkpoint {checkpoint.size} is signed by {signers}, a key the ledger does not "
        "let sign a tree of that size (retired by a rotation, or not announced yet)"
    )


def open_any(message: bytes, keys: Sequence[Verifier]) -> SignedCheckpoint:
    """A checkpoint signed by one of the log's own keys (its publisher's view: no periods)."""
    opened = note.open_note(message, keys)
    return SignedCheckpoint(opened, parse_checkpoint(opened.text))


def rotate(
    path: Path, owner: HostKey, new_key_path: Path, now: datetime | None = None
) -> ledger.Appended:
    """Append the rotation to the key at `new_key_path` (created if missing), signed by `owner`
    and the current log key; checkpoints after it are signed by the new key."""
    new_key = HostKey.load_or_create(new_key_path)
    with ledger.locked(path) as (conn, _):
        try:
            config = store.log_config(conn)
            if config is None:
                raise TransparencyError("not a transparency log (`ledger log-init` first)")
            signer = config.signer()
            new = Verifier(config.origin, note.ED25519, new_key.public_key_bytes())
            payload = _payload(config.verifier, new, signer.key)
            appended = ledger.append_locked(conn, path, owner, "policy", payload, now)
            store.add_log_key(conn, appended.entry.seq, new_key, new_key_path)
        except TransparencyError as exc:
            raise LedgerError(path, f"cannot rotate the log key, nothing written: {exc}") from None
    return appended


def _payload(old: Verifier, new: Verifier, old_key: HostKey) -> dict[str, str]:
    if new == old:
        raise TransparencyError("the new log key is the current one")
    signature = old_key.sign(rotation_statement(old.vkey, new.vkey))
    return {"policy": "log_key", "from": old.vkey, "to": new.vkey,
            "log_signature": note.b64encode(signature)}  # fmt: skip
