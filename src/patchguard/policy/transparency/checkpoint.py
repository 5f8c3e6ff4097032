"""C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): a log's signed tree head, its
witness cosignatures (https://c2sp.org/tlog-cosignature), and the split-view checks.

The note text is three lines, origin, tree size in decimal, root hash in base64, then any
extension lines. Two checkpoints of one origin that cannot both be true (same size and
different roots, or no valid consistency proof from the smaller to the larger) are a split
view: SplitView carries both signed notes, which together prove the log lied.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from patchguard.policy.transparency import TransparencyError, merkle, note
from patchguard.policy.transparency.note import COSIGNATURE, ED25519, Note, NoteError, Verifier

_SIZE = re.compile(r"(0|[1-9][0-9]{0,18})\Z")
# Seconds a cosignature may be dated ahead of the verifier's clock (NTP-synced hosts differ by
# far less; a witness clock further ahead is wrong, and its cosignature is not counted).
MAX_SKEW = 300


class SplitView(TransparencyError):
    """Two signed checkpoints of one log that cannot both be true; both notes are the proof."""

    def __init__(self, reason: str, first: bytes, second: bytes) -> None:
        super().__init__(reason)
        self.reason, self.first, self.second = reason, first, second


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        lines = (self.origin, str(self.size), note.b64encode(self.root), *self.extensions)
        return "".join(f"{line}\n" for line in lines)

    def describe(self) -> str:
        return f"{self.origin} size {self.size} root {self.root.hex()}"


def parse_checkpoint(text: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("a checkpoint has an origin, a size and a root hash, one per line")
    origin, size, root, *extensions = lines[:-1]
    if not origin:
        raise NoteError("the checkpoint's origin line is empty")
    if not _SIZE.match(size) or int(size) > merkle.MAX_SIZE:
        raise NoteError("the checkpoint's tree size is not a decimal number below 2^63")
    raw = note.b64decode(root, "the checkpoint's root hash")
    if len(raw) != merkle.HASH_SIZE:
        raise NoteError(f"the checkpoint's root hash is {len(raw)} bytes, not 32")
    if any(not line for line in extensions):
        raise NoteError("the checkpoint has an empty extension line")
    return Checkpoint(origin, int(size), raw, tuple(extensions))


@dataclass(frozen=True)
class SignedCheckpoint:
    note: Note
    checkpoint: Checkpoint

    @property
    def encoded(self) -> bytes:
        return self.note.encode()


def sign_checkpoint(checkpoint: Checkpoint, signer: note.Signer) -> SignedCheckpoint:
    return SignedCheckpoint(note.sign(checkpoint.text, [signer]), checkpoint)


def open_checkpoint(message: bytes, log: Verifier) -> SignedCheckpoint:
    """A checkpoint whose note carries a valid signature by the log's key."""
    if log.kind != ED25519:
        raise NoteError(f"{log.name}: a log key signs with type 0x01, not 0x{log.kind:02x}")
    opened = note.open_note(message, [log])
    return SignedCheckpoint(opened, parse_checkpoint(opened.text))


def cosign(signed: SignedCheckpoint, witness: note.Signer, when: int) -> SignedCheckpoint:
    """The checkpoint with the witness's cosignature/v1 added (at POSIX time `when`)."""
    if witness.kind != COSIGNATURE:
        raise NoteError(f"{witness.name}: a witness signs with type 0x04 (cosignature/v1)")
    if not 0 <= when < 1 << 63:
        raise NoteError(f"cosignature time {when} is out of range")
    if when > time.time() + MAX_SKEW:
        raise NoteError(f"cosignature time {when} is over {MAX_SKEW} s ahead of this clock")
    cosigned = note.sign(signed.note.text, [witness], when, keep=signed.note.signatures)
    return SignedCheckpoint(cosigned, signed.checkpoint)


def check_consistent(old: SignedCheckpoint, new: SignedCheckpoint, proof: Sequence[bytes]) -> None:
    """SplitView unless `new` extends `old` (same origin, size not smaller, proof valid)."""
    a, b = old.checkpoint, new.checkpoint
    if a.origin != b.origin:
        raise NoteError(f"checkpoints of two logs ({a.origin!r} and {b.origin!r})")
    if b.size < a.size:
        reason = f"the log went back from size {a.size} to {b.size}"
        raise SplitView(reason, old.encoded, new.encoded)
    try:
        merkle.verify_consistency(a.size, b.size, a.root, b.root, proof)
    except merkle.ProofError as exc:
        raise SplitView(f"split view: {exc}", old.encoded, new.encoded) from None


@dataclass(frozen=True)
class Cosigners:
    """Which configured witnesses validly cosigned a note, and which did so with a time in
    the future (beyond MAX_SKEW: not counted, a witness's clock is not to be believed)."""

    valid: tuple[str, ...]
    future: tuple[str, ...]


def cosigners(signed: Note, witnesses: Sequence[Verifier], now: int) -> Cosigners:
    """The distinct `witnesses` (by key) that cosigned `signed`, dated at most now + MAX_SKEW."""
    valid: list[str] = []
    future: list[str] = []
    for w in {w.vkey: w for w in witnesses}.values():
        when = signed.signed_by(w)
        if when is not None:
            (future if when > now + MAX_SKEW else valid).append(w.name)
    return Cosigners(tuple(valid), tuple(future))


def check_witness_keys(witnesses: Sequence[Verifier], quorum: int) -> None:
    if quorum < 0 or quorum > len({w.vkey for w in witnesses}):
        raise NoteError(f"a quorum of {quorum} out of {len(witnesses)} witnesses cannot be met")
    if any(w.kind != COSIGNATURE for w in witnesses):
        raise NoteError("a witness key must be a cosignature/v1 key (type 0x04)")


def quorum_text(found: Cosigners, quorum: int) -> str:
    """`cosigned by 1 of the 2 witnesses needed (w1)`, and any future-dated ones refused."""
    got = ", ".join(found.valid) or "none"
    text = f"cosigned by {len(found.valid)} of the {quorum} witnesses needed ({got})"
    if found.future:
        late = ", ".join(found.future)
        text += f"; refused as dated over {MAX_SKEW} s in the future: {late}"
    return text


def verify_cosigned(
    message: bytes,
    log: Verifier,
    witnesses: Sequence[Verifier],
    quorum: int,
    now: int | None = None,
) -> SignedCheckpoint:
    """The checkpoint, if the log signed it and at least `quorum` of the distinct `witnesses`
    cosigned it (cosignature/v1) at a time no later than `now` (default: the clock) plus
    MAX_SKEW; NoteError saying how many did otherwise. What a host calls before it applies an
    exception set under a checkpoint."""
    check_witness_keys(witnesses, quorum)
    signed = open_checkpoint(message, log)
    found = cosigners(signed.note, witnesses, int(time.time()) if now is None else now)
    if len(found.valid) < quorum:
        raise NoteError(f"checkpoint {signed.checkpoint.describe()}: {quorum_text(found, quorum)}")
    return signed
