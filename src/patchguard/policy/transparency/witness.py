"""A witness: cosigns a log's checkpoints, each only if it extends the last one it cosigned.

Requests are C2SP tlog-witness add-checkpoint bodies (https://c2sp.org/tlog-witness):
`old <size>`, the consistency proof from that size (one base64 hash per line), a blank line,
the signed checkpoint; exactly what `patchguard ledger prove --consistency OLD` prints. The
witness keeps, per log origin, the last checkpoint it cosigned (and which log key signed it)
in its state directory, under a lock. It cosigns (C2SP tlog-cosignature, cosignature/v1, with
the time) only when `old` is the size it holds and the proof links that checkpoint to the new
one; a new checkpoint that cannot extend the one it holds is a SplitView carrying both notes.

A log-key rotation (rotation.py): given where the log publishes its tiles (`published`, `witness
serve --log-tiles ORIGIN=URL`), a witness takes a checkpoint under a key it does not trust yet
if the log announced that key in a rotation entry included in the checkpoint the witness
holds, signed by the old key (so the operator has the witnesses cosign the rotation's own
checkpoint first); it then holds, and trusts, the new key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from patchguard.atomic import write_atomic
from patchguard.policy.chain import Entry
from patchguard.policy.transparency import TransparencyError, merkle, note, rotation, tiles
from patchguard.policy.transparency.checkpoint import (
    SignedCheckpoint,
    check_consistent,
    cosign,
    open_checkpoint,
)
from patchguard.policy.transparency.note import NoteError, Signer, Verifier

MAX_PROOF = 63  # tlog-witness: no more than 63 consistency proof lines
MAX_REQUEST = note.MAX_NOTE + 16 + MAX_PROOF * 45
_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})\Z")


class Conflict(TransparencyError):
    """The request's old size is not the size the witness holds (HTTP 409 in tlog-witness)."""

    def __init__(self, reason: str, size: int) -> None:
        super().__init__(reason)
        self.size = size


class UnknownLog(TransparencyError):
    """The checkpoint's origin is not a log this witness follows (HTTP 404)."""


class Forbidden(TransparencyError):
    """No key the witness trusts for the origin signed the checkpoint (HTTP 403)."""


@dataclass(frozen=True)
class Request:
    old: int
    proof: tuple[bytes, ...]
    checkpoint: bytes


def parse_request(body: bytes) -> Request:
    if len(body) > MAX_REQUEST:
        raise NoteError(f"the request is over {MAX_REQUEST} bytes")
    head, blank, message = body.partition(b"\n\n")
    if not blank:
        raise NoteError("the request has no blank line before its checkpoint")
    try:
        first, *hashes = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise NoteError("the request's proof lines are not ASCII") from None
    match = _OLD.match(first)
    if not match:
        raise NoteError("the request does not start with `old <size>`")
    if len(hashes) > MAX_PROOF:
        raise NoteError(f"a proof of {len(hashes)} hashes is longer than any tree needs")
    proof = tuple(note.b64decode(h, "a proof hash") for h in hashes)
    if any(len(h) != merkle.HASH_SIZE for h in proof):
        raise NoteError("a proof hash is not 32 bytes")
    return Request(int(match.group(1)), proof, message)


@dataclass(frozen=True)
class Witness:
    signer: Signer  # kind COSIGNATURE
    logs: tuple[tuple[str, Verifier], ...]  # (origin, log key) of each log it witnesses
    state: Path
    published: tuple[tuple[str, str], ...] = ()  # (origin, URL or directory of its tiles)

    def _file(self, origin: str) -> Path:
        return self.state / "witness" / hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "witness.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _open(self, message: bytes) -> tuple[SignedCheckpoint, Verifier]:
        """The checkpoint, verified with the keys trusted for its origin."""
        text = note.parse(message).text
        origin = text.split("\n", 1)[0]
        trusted = [key for name, key in self.logs if name == origin]
        if not trusted:
            raise UnknownLog(f"{origin!r} is not a log this witness follows")
        held = self.last(origin)
        if held is not None and held[1] not in trusted:
            trusted.append(held[1])  # a successor key it took from a proven rotation
        try:
            opened = note.open_note(message, trusted)
        except NoteError as exc:
            return self._successor(message, origin, held, Forbidden(f"{origin}: {exc}"))
        signer = next(k for k in trusted if opened.signed_by(k) is not None)
        return open_checkpoint(message, signer), signer

    def _successor(
        self,
        message: bytes,
        origin: str,
        held: tuple[SignedCheckpoint, Verifier] | None,
        refused: Forbidden,
    ) -> tuple[SignedCheckpoint, Verifier]:
        """The checkpoint under a key the log announced (`refused` if none): a log-key rotation
        entry from the key that signed the checkpoint this witness holds, inside that very
        checkpoint (every entry of it read from the log's published tiles, hashed to its root
        and replayed as a ledger: the rotation's signatures checked)."""
        where = dict(self.published).get(origin)
        if where is None or held is None:
            raise refused
        try:
            entries = _entries_of(where, held[0])
            return rotation.open_announced(message, held[1], entries)
        except TransparencyError as exc:
            raise Forbidden(f"{refused}; no rotation to its key proven: {exc}") from None

    def last(self, origin: str) -> tuple[SignedCheckpoint, Verifier] | None:
        path = self._file(origin)
        try:
            doc = json.loads(path.read_bytes()[: 2 * note.MAX_NOTE])
            log = note.parse_vkey(str(doc["vkey"]))
            return open_checkpoint(str(doc["checkpoint"]).encode("utf-8"), log), log
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, TransparencyError) as exc:
            raise TransparencyError(f"{path}: the witness's state is damaged: {exc}") from None

    def add_checkpoint(self, body: bytes, now: int) -> SignedCheckpoint:
        """The checkpoint cosigned at POSIX time `now`, if it extends the one last cosigned."""
        request = parse_request(body)
        signed, log = self._open(request.checkpoint)
        origin = signed.checkpoint.origin
        with self._locked():
            held = self.last(origin)
            size = held[0].checkpoint.size if held else 0
            if request.old > signed.checkpoint.size:
                raise NoteError(f"old size {request.old} is over the checkpoint's size")
            if request.old != size:
                raise Conflict(f"{origin}: the witness holds size {size}, not {request.old}", size)
            if held is not None:
                if held[1] != log and (origin, held[1]) not in self.logs:  # a key rotation:
                    # the operator lists the old and the new key while the log moves over
                    raise UnknownLog(f"{origin}: signed by {log.vkey}, not {held[1].vkey}")
                check_consistent(held[0], signed, request.proof)
            elif request.proof:
                raise NoteError("a first checkpoint comes with no proof (old 0)")
            cosigned = cosign(signed, self.signer, now)
            doc = {"vkey": log.vkey, "checkpoint": signed.encoded.decode("utf-8")}
            path = self._file(origin)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(doc, indent=1).encode("utf-8"), 0o600)
        return cosigned


MAX_ENTRIES = 1_000_000  # entries a witness reads to prove a rotation (about 600 MB)


def _entries_of(where: str, held: SignedCheckpoint) -> list[Entry]:
    """The entries of the checkpoint the witness holds, from the log's tiles at `where`, proven
    by its root and replayed as a ledger; TransparencyError otherwise."""
    from patchguard.policy.transparency import client

    size = held.checkpoint.size
    if size > MAX_ENTRIES:
        raise TransparencyError(f"its checkpoint of {size} entries is over {MAX_ENTRIES}")
    source = tiles.TileSource(client.fetcher(where), size)
    data = tuple(e for b in tiles.bundles_for(size) for e in source.entries(b.index))
    root = merkle.MemoryTree([merkle.leaf_hash(e) for e in data]).root() if data else None
    if len(data) != size or root != held.checkpoint.root:
        raise TransparencyError(f"the entries at {where} do not give {held.checkpoint.describe()}")
    return list(client.replay_entries(data).entries)


def cosignature_lines(cosigned: SignedCheckpoint, witness: Verifier) -> str:
    """The witness's own signature lines (what tlog-witness answers with)."""
    mine = (witness.name, witness.key_id)
    return "".join(s.line for s in cosigned.note.signatures if (s.name, s.key_id) == mine)


def merge_cosignatures(signed: bytes, cosigned: Sequence[bytes]) -> bytes:
    """One note with the log's signatures and every witness's cosignature lines appended."""
    base = note.parse(signed)
    lines = list(base.signatures)
    for other in cosigned:
        parsed = note.parse(other)
        if parsed.text != base.text:
            raise NoteError("a cosigned note is for another checkpoint")
        lines += [s for s in parsed.signatures if s not in lines]
    return note.Note(base.text, tuple(lines)).encode()
