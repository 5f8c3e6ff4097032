"""C2SP signed-note (https://c2sp.org/signed-note): text signed by ed25519 keys.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
`— <name> base64(key ID || signature)`. A key ID is the first four bytes of
SHA-256(name || 0x0A || type || public key); type 0x01 is a plain ed25519 signature of the
text, type 0x04 a C2SP tlog-cosignature (https://c2sp.org/tlog-cosignature): an ed25519
signature of `cosignature/v1\ntime <t>\n` + text, sent as the 8-byte big-endian time followed
by the 64-byte signature. Verifier keys are `<name>+<8 hex digits key ID>+base64(type || key)`,
the form golang.org/x/mod/sumdb/note reads. Signatures from unknown keys are kept but ignored;
one from a known key that fails rejects the whole note (as the spec says verifiers should).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from patchguard.policy.transparency import TransparencyError
from patchguard.signing import HostKey, verify_signature

ED25519, COSIGNATURE = 0x01, 0x04
MAX_NOTE = 64 * 1024  # a checkpoint with a hundred signatures is under 12 KiB
MAX_SIGNATURES = 100  # the spec asks for at least 16; Go's note package stops at 100
_DASH = "\u2014 "
_KEY_ID = re.compile(r"[0-9a-f]{8}\Z")
_NAME_FORBIDDEN = re.compile(r"[\s+]")


class NoteError(TransparencyError):
    """A note, signature or key that is malformed, or that does not verify."""


def b64decode(text: str, what: str) -> bytes:
    """Standard base64, strictly: padding right, no stray characters, one spelling only."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not base64 in its one standard spelling")
    return raw


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def check_name(name: str) -> str:
    if not name or _NAME_FORBIDDEN.search(name) or not name.isprintable():
        raise NoteError(f"key name {name!r} is empty or has a space, a plus or a control character")
    return name


def key_id(name: str, kind: int, public_key: bytes) -> int:
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([kind]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Verifier:
    """A public key with the name and signature type it verifies notes for."""

    name: str
    kind: int  # ED25519 or COSIGNATURE
    public_key: bytes  # raw ed25519, 32 bytes

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.kind, self.public_key)

    @property
    def vkey(self) -> str:
        key = b64encode(bytes([self.kind]) + self.public_key)
        return f"{self.name}+{self.key_id:08x}+{key}"

    def verify(self, text: bytes, signature: bytes) -> int | None:
        """None if it does not verify; else the cosignature's time (0 for a plain signature)."""
        if self.kind == ED25519:
            ok = len(signature) == 64 and verify_signature(self.public_key, text, signature)
            return 0 if ok else None
        if len(signature) != 72:
            return None
        when = int.from_bytes(signature[:8], "big")
        message = cosigned_message(text, when)
        ok = when < 1 << 63 and verify_signature(self.public_key, message, signature[8:])
        return when if ok else None


def cosigned_message(text: bytes, when: int) -> bytes:
    return b"cosignature/v1\ntime %d\n" % when + text


def parse_vkey(vkey: str) -> Verifier:
    """A verifier key `<name>+<key ID>+<base64(type || key)>`, its key ID checked."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError("a verifier key is <name>+<key id>+<key>: wrong number of '+'")
    name, hex_id, encoded = parts
    check_name(name)
    if not _KEY_ID.match(hex_id):
        raise NoteError("the verifier key's key id is not 8 lowercase hex digits")
    raw = b64decode(encoded, "the verifier key")
    if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE):
        raise NoteError("the verifier key is not an ed25519 key (type 0x01 or 0x04, 32 bytes)")
    verifier = Verifier(name, raw[0], raw[1:])
    if verifier.key_id != int(hex_id, 16):
        raise NoteError(f"the verifier key's key id {hex_id} does not match its name and key")
    return verifier


@dataclass(frozen=True)
class Signer:
    """A private key, the name it signs under and its signature type."""

    name: str
    kind: int
    key: HostKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(check_name(self.name), self.kind, self.key.public_key_bytes())

    def sign(self, text: bytes, when: int = 0) -> bytes:
        if self.kind == ED25519:
            return self.key.sign(text)
        return when.to_bytes(8, "big") + self.key.sign(cosigned_message(text, when))


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: int
    signature: bytes  # after the key ID

    @property
    def line(self) -> str:
        raw = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_DASH}{self.name} {b64encode(raw)}\n"


@dataclass(frozen=True)
class Note:
    text: str  # ends with a newline
    signatures: tuple[Signature, ...]  # every signature line, in order

    def encode(self) -> bytes:
        return (self.text + "\n" + "".join(s.line for s in self.signatures)).encode("utf-8")

    def signed_by(self, verifier: Verifier) -> int | None:
        """The time (0 for a plain signature) of a valid signature by `verifier`, or None."""
        text = self.text.encode("utf-8")
        for sig in self.signatures:
            if (sig.name, sig.key_id) == (verifier.name, verifier.key_id):
                when = verifier.verify(text, sig.signature)
                if when is not None:
                    return when
        return None


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("the note text does not end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("the note has a control character")


def sign(
    text: str, signers: Sequence[Signer], when: int = 0, keep: Sequence[Signature] = ()
) -> Note:
    """The note `text` signed by each signer (after any signatures already on it)."""
    _check_text(text)
    raw = text.encode("utf-8")
    new = [Signature(s.name, s.verifier.key_id, s.sign(raw, when)) for s in signers]
    return Note(text, (*keep, *new))


def parse(message: bytes) -> Note:
    """A note's text and signature lines, nothing verified yet."""
    if len(message) > MAX_NOTE:
        raise NoteError(f"the note is over {MAX_NOTE} bytes")
    try:
        decoded = message.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("the note is not UTF-8") from None
    _check_text(decoded)
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line before its signatures")
    text, lines = decoded[: split + 1], decoded[split + 2 :].split("\n")
    if lines[-1] != "" or len(lines) < 2:
        raise NoteError("the note has no signature lines")
    if len(lines) - 1 > MAX_SIGNATURES:
        raise NoteError(f"the note has over {MAX_SIGNATURES} signatures")
    return Note(text, tuple(_signature(line) for line in lines[:-1]))


def _signature(line: str) -> Signature:
    if not line.startswith(_DASH):
        raise NoteError("a signature line does not start with an em dash and a space")
    name, _, encoded = line[len(_DASH) :].partition(" ")
    check_name(name)
    raw = b64decode(encoded, f"the signature by {name}")
    if len(raw) < 5:
        raise NoteError(f"the signature by {name} is too short")
    return Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def open_note(message: bytes, verifiers: Sequence[Verifier]) -> Note:
    """A note with a valid signature by at least one of `verifiers`; NoteError otherwise, and
    also when a signature by one of them (same name and key ID) fails."""
    note = parse(message)
    text = note.text.encode("utf-8")
    known = {(v.name, v.key_id): v for v in verifiers}
    verified = 0
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if verifier.verify(text, sig.signature) is None:
            raise NoteError(f"the signature by {sig.name} ({sig.key_id:08x}) does not verify")
        verified += 1
    if not verified:
        names = ", ".join(sorted({v.name for v in verifiers})) or "nobody"
        raise NoteError(f"the note is not signed by a known key ({names})")
    return note
