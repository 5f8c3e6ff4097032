"""A replay of the exception ledger kept in the database, signed with the server's key, so that
a server process that starts replays only the entries appended after it (O(new entries))
instead of the whole ledger (about 0.45 ms an entry: 45 s of CPU at 100,000).

What is kept (`ledger_replays`, one row per saved replay, the newest KEEP): the verified head
(seq and hash), a running digest of every stored row up to it (`rows_digest`: SHA-256 over
the previous digest and the row's columns, so any change to any column of any row changes
it), when the replay from entry 1 it continues began, when the rows were last compared, and
what the replay derived (the rules' state, one description per entry), pickled and
compressed. The server's key signs a statement of all of it, the pickled bytes by digest.

What a process trusts at start, and why that is no weaker than replaying from entry 1: only
a saved replay whose signature verifies under the server's own key (the file every server
process of a fleet shares; hosts pin its public key at enrolment). A process signs a replay
only after it replayed every entry under the rules: from entry 1, or from a saved replay it
had itself trusted this way. Someone who can write the database but not read the key can
delete saved replays (the next start replays from entry 1, as before), put an older one back
(it was genuine: the entries after it are replayed), or change rows (the head row no longer
matches, or the periodic row comparison does not: the replay starts again from entry 1 and
stops at the changed entry, as before). The bytes are unpickled only after the signature
verifies, so they are the server's own; a replay saved by another version of patchguard is
not used. docs/server.md says the same for operators.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from patchguard import __version__
from patchguard.policy.chain import canonical
from patchguard.server.db import LedgerReplay
from patchguard.signing import HostKey, verify_signature

FORMAT = "patchguard.ledger-replay/1"
KEEP = 2  # saved replays kept: the newest, and one in case the newest is being replaced
MAX_DERIVED = 512 * 1024 * 1024  # bytes, decompressed: a bound on memory for a stored blob
log = logging.getLogger("patchguard.server.pages")


def row_digest(previous: bytes, row: Sequence[object]) -> bytes:
    """The running digest extended by one row (its columns as JSON, in COLUMNS order)."""
    text = json.dumps(list(row), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(previous + text.encode("ascii")).digest()


@dataclass(frozen=True)
class Saved:
    """A replay as saved: where it stopped, and what it derived (`derived`, any picklable)."""

    seq: int
    head_hash: str
    rows_digest: bytes
    started_at: datetime
    checked_at: datetime
    derived: object


def _statement(row: LedgerReplay) -> bytes:
    """What the key signs: every column, the derived bytes by their SHA-256, and the format
    and version, so a replay saved by other code is never read back as this code's."""
    fields = {
        "format": FORMAT,
        "version": __version__,
        "seq": row.seq,
        "head_hash": row.head_hash,
        "rows_digest": row.rows_digest,
        "started_at": row.started_at.isoformat(),
        "checked_at": row.checked_at.isoformat(),
        "derived_sha256": hashlib.sha256(row.derived).hexdigest(),
        "signer": row.signer,
    }
    return canonical(fields).encode("ascii")


def save(session: Session, key: HostKey, saved: Saved) -> bool:
    """Store `saved`, signed, and drop all but the newest KEEP; False if another process
    stored one at the same head first (the caller's transaction is then rolled back)."""
    row = LedgerReplay(
        seq=saved.seq,
        head_hash=saved.head_hash,
        rows_digest=saved.rows_digest.hex(),
        started_at=saved.started_at,
        checked_at=saved.checked_at,
        derived=zlib.compress(pickle.dumps(saved.derived, pickle.HIGHEST_PROTOCOL), 1),
        signer=key.public_key_bytes().hex(),
        signature="",
    )
    row.signature = key.sign(_statement(row)).hex()
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        return False
    kept = select(LedgerReplay.seq).order_by(LedgerReplay.seq.desc()).offset(KEEP - 1).limit(1)
    oldest = session.scalar(kept)
    if oldest is not None:
        session.execute(delete(LedgerReplay).where(LedgerReplay.seq < oldest))
    return True


def newest(session: Session, key: HostKey) -> Saved | None:
    """The newest saved replay that this server's key signed, or None (logged: why not)."""
    row = session.scalars(select(LedgerReplay).order_by(LedgerReplay.seq.desc()).limit(1)).first()
    if row is None:
        return None
    reason = _untrusted(row, key)
    if reason is None:
        derived = _unpickled(row.derived)
        if derived is not None:
            digest = bytes.fromhex(row.rows_digest)
            return Saved(row.seq, row.head_hash, digest, row.started_at, row.checked_at, derived)
        reason = "its state cannot be read back"
    log.warning("saved ledger replay at entry %d not used, %s", row.seq, reason)
    return None


def _untrusted(row: LedgerReplay, key: HostKey) -> str | None:
    """Why the row is not to be trusted, or None."""
    public = key.public_key_bytes()
    if row.signer != public.hex():
        return "signed by another key"
    try:
        signature = bytes.fromhex(row.signature)
    except ValueError:
        return "its signature is not hex"
    if not verify_signature(public, _statement(row), signature):
        return "its signature does not verify: altered, or saved by another patchguard version"
    return None


def _unpickled(blob: bytes) -> object | None:
    """The derived state; None if it does not read back (it was signed by this key, so this
    is another version's layout or a bug, never someone else's bytes)."""
    try:
        unpacker = zlib.decompressobj()
        raw = unpacker.decompress(blob, MAX_DERIVED)
        if unpacker.unconsumed_tail:
            return None
        derived: object = pickle.loads(raw)  # the server's own signed bytes
    except Exception:  # any failure means: replay from entry 1
        return None
    return derived
