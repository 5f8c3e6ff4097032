"""One ledger entry, its hash and its signature, and the checks that link entries into a chain.

The hash of an entry is the SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of
{format, seq, time, kind, actor, actor_key, subject, payload, prev_hash}, where payload is the
exact stored text of the payload (itself canonical JSON). The signature is the actor's ed25519
signature of the 32 raw bytes of that hash. Because seq and prev_hash are inside the hash, an
entry cannot be edited, moved, dropped or slipped in without breaking the hash, the link or
the numbering at that very entry; only the key that signed an entry can make a valid one.
This module is pure (no SQLite) so an exported ledger verifies exactly as the database does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from patchguard.signing import HostKey, fingerprint_of, verify_signature

FORMAT = "patchguard.ledger/1"
KINDS = ("request", "approve", "deny", "revoke", "expire", "policy")
GENESIS_HASH = "0" * 64  # the prev_hash of entry 1
COLUMNS = (
    "seq",
    "time",
    "kind",
    "actor",
    "actor_key",
    "subject",
    "payload",
    "prev_hash",
    "hash",
    "signature",
)


def canonical(value: object) -> str:
    """The one JSON text of a value: what is hashed must not depend on who wrote it."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


@dataclass(frozen=True)
class Entry:
    seq: int
    time: str  # ISO 8601, UTC, seconds: "2026-05-09T12:00:00+00:00"
    kind: str
    actor: str  # fingerprint of actor_key (16 hex digits)
    actor_key: str  # raw ed25519 public key, hex
    subject: int | None  # the request id (the seq of the request entry); None for policy
    payload: str  # canonical JSON object
    prev_hash: str
    hash: str
    signature: str  # hex

    @property
    def data(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        return value if isinstance(value, dict) else {}

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}


def content_hash(
    seq: int,
    time: str,
    kind: str,
    actor: str,
    actor_key: str,
    subject: int | None,
    payload: str,
    prev_hash: str,
) -> str:
    fields = {
        "format": FORMAT,
        "seq": seq,
        "time": time,
        "kind": kind,
        "actor": actor,
        "actor_key": actor_key,
        "subject": subject,
        "payload": payload,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical(fields).encode("ascii")).hexdigest()


def seal(
    seq: int,
    when: datetime,
    kind: str,
    key: HostKey,
    subject: int | None,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> Entry:
    """A new signed entry (not yet stored)."""
    time = when.isoformat(timespec="seconds")
    actor_key = key.public_key_bytes().hex()
    text = canonical(dict(payload))
    digest = content_hash(seq, time, kind, key.fingerprint(), actor_key, subject, text, prev_hash)
    signature = key.sign(bytes.fromhex(digest)).hex()
    return Entry(
        seq, time, kind, key.fingerprint(), actor_key, subject, text, prev_hash, digest, signature
    )


_TYPES: dict[str, tuple[type, ...]] = {
    "seq": (int,),
    "subject": (int, type(None)),
    **{name: (str,) for name in COLUMNS if name not in ("seq", "subject")},
}


def entry_from_row(row: Sequence[object], position: int) -> Entry | str:
    """An Entry, or why the stored row cannot be one (SQLite keeps any type in any column)."""
    where = row[0] if isinstance(row[0], int) else f"at position {position}"
    if len(row) != len(COLUMNS):
        return f"entry {where}: has {len(row)} fields, not {len(COLUMNS)}"
    for name, value in zip(COLUMNS, row, strict=True):
        if not isinstance(value, _TYPES[name]) or isinstance(value, bool):
            return f"entry {where}: {name} is a {type(value).__name__}, not what a ledger holds"
    return Entry(*row)  # type: ignore[arg-type]  # each field's type was checked above


def _bytes(text: str) -> bytes | None:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def check_link(entry: Entry, previous: Entry | None) -> str | None:
    """Why `entry` does not belong after `previous` (None: it is the first), or None."""
    n = entry.seq
    expected = previous.seq + 1 if previous else 1
    if n < expected:  # only an export can hold these: the database's seq is unique
        return f"entry {n}: out of order (expected entry {expected})"
    if n > expected and previous is None:
        missing = "entry 1 is" if n == 2 else f"entries 1 to {n - 1} are"
        return f"{missing} missing: the ledger starts at entry {n}"
    if n > expected:
        return f"entries skip from {expected - 1} to {n}"
    return check_sealed(entry, previous)


def check_sealed(entry: Entry, previous: Entry | None) -> str | None:
    """Why `entry`'s hash, link to `previous` (None: checked elsewhere, or it is entry 1),
    signature or fields are bad, or None; its numbering is the caller's to check."""
    n = entry.seq
    recomputed = content_hash(
        n,
        entry.time,
        entry.kind,
        entry.actor,
        entry.actor_key,
        entry.subject,
        entry.payload,
        entry.prev_hash,
    )
    if recomputed != entry.hash:
        return f"entry {n}: hash does not match its contents"
    if (previous is not None or n == 1) and entry.prev_hash != (
        previous.hash if previous else GENESIS_HASH
    ):
        if previous is None:
            return f"entry {n}: prev_hash is not the start of a ledger ({GENESIS_HASH[:8]}...)"
        return f"entry {n}: prev_hash does not link to entry {previous.seq}"
    public_key, signature = _bytes(entry.actor_key), _bytes(entry.signature)
    if public_key is None or len(public_key) != 32 or fingerprint_of(public_key) != entry.actor:
        return f"entry {n}: actor {entry.actor} is not the fingerprint of its public key"
    if signature is None or not verify_signature(public_key, bytes.fromhex(entry.hash), signature):
        return f"entry {n}: signature does not verify for actor {entry.actor}"
    return _check_fields(entry, previous)


def _check_fields(entry: Entry, previous: Entry | None) -> str | None:
    """Signed but still unusable: an appender never writes these, a forger with a key might."""
    n = entry.seq
    if entry.kind not in KINDS:
        return f"entry {n}: unknown kind {entry.kind!r}"
    try:
        when = datetime.fromisoformat(entry.time)
        parsed = json.loads(entry.payload)
    except ValueError:
        return f"entry {n}: time or payload cannot be read"
    if when.utcoffset() is None:
        return f"entry {n}: time {entry.time} has no time zone"
    if not isinstance(parsed, dict) or canonical(parsed) != entry.payload:
        return f"entry {n}: payload is not a canonical JSON object"
    if previous is not None and when < previous.when:
        return f"entry {n}: its time {entry.time} is before entry {previous.seq}'s"
    return None
