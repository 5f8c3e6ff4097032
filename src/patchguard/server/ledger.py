"""The exception ledger as the server holds it: imported from a ledger that verifies, only
ever extended (an import that does not start with what the server already holds is refused),
and served to hosts as an export (`policy.ledger.export_json`'s shape) for them to verify.

A ledger that is a transparency log brings its log key and latest signed checkpoint along:
the checkpoint is checked (signed by the log's key, its root the entries' tree) before it is
stored, and the server serves it with the log's tiles (server/tlog.py). A later import must be
signed by the same log key, or by a successor a log-key rotation entry among the imported
entries announced (policy/transparency/rotation.py): the server then holds the new key.

The operator hands the server the witnesses' cosignatures (`patchguard server ledger cosigned
FILE`, FILE the checkpoint `ledger witness-collect` wrote): the note must be signed by the
server's log key and be a checkpoint the server holds (same size, same text); its cosignature
lines are added to the stored note, which `/log/checkpoint` then serves (still one C2SP signed
note). The server does not know the witnesses' keys: it keeps each line that has the shape of
a cosignature/v1 (a well-formed key name, a 72-byte signature) and is not under the log's name;
hosts verify them with the witness keys they pin, and count only the ones that verify."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from patchguard.policy.chain import COLUMNS, FORMAT, Entry
from patchguard.policy.ledger import LedgerError, read_log, read_rows, replay
from patchguard.policy.transparency import TransparencyError, note, rotation, store
from patchguard.policy.transparency.checkpoint import SignedCheckpoint, open_checkpoint
from patchguard.server.db import LedgerCheckpoint, LedgerEntry, LedgerLog


def _stored(session: Session) -> list[LedgerEntry]:
    return list(session.scalars(select(LedgerEntry).order_by(LedgerEntry.seq)))


Rows = list[tuple[object, ...]]


def _read(path: Path) -> tuple[Rows, list[tuple[int, bytes]], store.LogConfig | None]:
    """Rows, checkpoints and log key; an export has only rows."""
    return (read_rows(path), [], None) if path.suffix == ".json" else read_log(path)


def import_ledger(session: Session, path: Path) -> tuple[int, int]:
    """Add the entries of the ledger at `path` (SQLite or a .json export) that the server
    does not hold yet: (entries added, entries held). LedgerError if it does not verify or
    is not an extension of the held ledger."""
    rows, notes, config = _read(path)
    loaded = replay(rows)
    if not loaded.result.ok:
        raise LedgerError(path, f"does not verify, nothing imported: {loaded.result.reason}")
    held = _stored(session)
    for entry, row in zip(held, rows, strict=False):
        if entry.hash != row[COLUMNS.index("hash")]:
            raise LedgerError(
                path, f"entry {entry.seq} differs from the server's: a rewritten ledger"
            )
    if len(rows) < len(held):
        raise LedgerError(path, f"has {len(rows)} entries, the server already {len(held)}")
    new = rows[len(held) :]
    session.add_all(LedgerEntry(**dict(zip(COLUMNS, row, strict=True))) for row in new)
    if config is not None and notes:
        _import_checkpoint(session, path, loaded.entries, notes[-1], config)
    return len(new), len(held) + len(new)


def _import_checkpoint(
    session: Session,
    path: Path,
    entries: Sequence[Entry],
    latest: tuple[int, bytes],
    config: store.LogConfig,
) -> None:
    """Keep the log's key and its latest checkpoint, once it is shown to be signed by that
    key over exactly these entries. The key is the one the server holds, or a successor a
    log-key rotation entry among `entries` announced (then held from here on)."""
    known = session.get(LedgerLog, 1)
    size, note = latest
    signed, key = _signed(path, known, config, entries, note)
    checkpoint = signed.checkpoint
    tree = store.tree_of(entries)
    if checkpoint.size != size or size > tree.size or tree.root(size) != checkpoint.root:
        raise LedgerError(path, f"checkpoint {size} does not match the ledger's entries")
    if known is None:
        session.add(LedgerLog(id=1, origin=config.origin, public_key=key.public_key.hex()))
    else:
        known.public_key = key.public_key.hex()  # the key of the newest checkpoint held
    if session.get(LedgerCheckpoint, size) is None:
        session.add(LedgerCheckpoint(size=size, note=note))


def _signed(
    path: Path,
    known: LedgerLog | None,
    config: store.LogConfig,
    entries: Sequence[Entry],
    message: bytes,
) -> tuple[SignedCheckpoint, note.Verifier]:
    """The checkpoint and its signer: on a first import any of the log's own keys, later the
    server's key or a successor the entries announced (rotation.py)."""
    try:
        if known is None:
            keys = (config.verifier, *(note.parse_vkey(r.old) for r in rotation.rotations(entries)))
            signed = rotation.open_any(message, keys)
            return signed, next(k for k in keys if signed.note.signed_by(k) is not None)
        held = note.Verifier(known.origin, note.ED25519, bytes.fromhex(known.public_key))
        if known.origin != config.origin:
            raise note.NoteError("another origin")
        return rotation.open_announced(message, held, entries)
    except TransparencyError as exc:
        if known is not None and config.verifier.vkey not in _announced(known, entries):
            vkey = config.verifier.vkey
            raise LedgerError(path, f"is the log {vkey}, not the server's log") from None
        raise LedgerError(path, f"checkpoint: {exc}") from None


def _announced(known: LedgerLog, entries: Sequence[Entry]) -> set[str]:
    held = note.Verifier(known.origin, note.ED25519, bytes.fromhex(known.public_key))
    return {p.key.vkey for p in rotation.periods(held, entries)}


def _read_note(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(note.MAX_NOTE + 1)
    if len(data) > note.MAX_NOTE:
        raise LedgerError(path, f"is over {note.MAX_NOTE} bytes: not a checkpoint")
    return data


def _log_verifier(session: Session, path: Path) -> note.Verifier:
    log = session.get(LedgerLog, 1)
    if log is None:
        raise LedgerError(path, "the server holds no transparency log: import the ledger first")
    return note.Verifier(log.origin, note.ED25519, bytes.fromhex(log.public_key))


def _cosignature_lines(opened: note.Note, log: note.Verifier) -> list[note.Signature]:
    """The lines shaped as cosignature/v1 (8-byte time, 64-byte signature), not the log's."""
    return [s for s in opened.signatures if s.name != log.name and len(s.signature) == 72]


def add_cosignatures(session: Session, path: Path) -> tuple[int, int, int]:
    """Add the cosignature lines of the checkpoint at `path` to the server's stored checkpoint
    of the same size: (lines added, lines on it now, its size). LedgerError if the note is not
    signed by the server's log key or is not a checkpoint the server holds."""
    log = _log_verifier(session, path)
    try:
        signed = open_checkpoint(_read_note(path), log)
    except TransparencyError as exc:
        raise LedgerError(path, f"not a checkpoint of the server's log: {exc}") from None
    size = signed.checkpoint.size
    row = session.get(LedgerCheckpoint, size)
    if row is None:
        raise LedgerError(path, f"the server holds no checkpoint of size {size}: import first")
    held = note.parse(row.note)
    if held.text != signed.note.text:
        raise LedgerError(path, f"checkpoint {size} differs from the server's: a split view")
    lines = list(held.signatures)
    added = 0
    for sig in _cosignature_lines(signed.note, log):
        if all((sig.name, sig.key_id) != (old.name, old.key_id) for old in lines):
            lines.append(sig)
            added += 1
    if len(lines) > note.MAX_SIGNATURES:
        raise LedgerError(path, f"would make over {note.MAX_SIGNATURES} signatures: not stored")
    row.note = note.Note(held.text, tuple(lines)).encode()
    return added, len(lines) - 1, size


def export(session: Session) -> dict[str, Any]:
    entries = [{name: getattr(e, name) for name in COLUMNS} for e in _stored(session)]
    return {"format": FORMAT, "entries": entries}
