"""The guard's config is signed: `patchguard config sign FILE` writes FILE.sig with the host
key, and the guard checks it before use and at every sweep. A config edited after signing, or
signed by another key, is tampering; an unsigned one runs, but is reported."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from patchguard.atomic import write_atomic
from patchguard.safe_read import InputError, parse_json, read_bounded
from patchguard.signing import HostKey, fingerprint_of

FORMAT = "patchguard.config-signature/1"


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    missing: bool  # no .sig at all (unsigned), as opposed to a bad one
    reason: str  # one line: what was found


def signature_path(config: Path) -> Path:
    return config.with_name(config.name + ".sig")


def _signed_text(digest: str) -> bytes:
    return f"{FORMAT}\n{digest}\n".encode()


def sign_config(config: Path, key: HostKey) -> Path:
    """Write <config>.sig: the file's sha256 signed by `key` (atomically)."""
    digest = hashlib.sha256(read_bounded(config, "config")).hexdigest()
    doc = {
        "format": FORMAT,
        "sha256": digest,
        "key": key.fingerprint(),
        "signature": key.sign(_signed_text(digest)).hex(),
    }
    out = signature_path(config)
    write_atomic(out, (json.dumps(doc, indent=1) + "\n").encode(), 0o644)
    return out


def check_config(config: Path, public_key: bytes) -> SignatureCheck:
    """Whether <config>.sig signs the config as it is now, with the key `public_key`."""
    sig = signature_path(config)
    if not sig.exists():
        return SignatureCheck(False, True, f"{sig}: no signature (`patchguard config sign`)")
    try:
        doc = parse_json(read_bounded(sig, "signature"), str(sig))
        digest, signature = str(doc["sha256"]), bytes.fromhex(str(doc["signature"]))
    except InputError as exc:
        return SignatureCheck(False, False, f"unreadable signature: {exc}")
    except (ValueError, KeyError, TypeError) as exc:
        return SignatureCheck(False, False, f"{sig}: unreadable signature: {exc}")
    try:
        now = hashlib.sha256(read_bounded(config, "config")).hexdigest()
    except InputError as exc:
        return SignatureCheck(False, False, f"unreadable: {exc}")
    if now != digest:
        return SignatureCheck(False, False, f"{config}: changed since it was signed")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _signed_text(digest))
    except InvalidSignature:
        signer = doc.get("key", "?")
        mine = fingerprint_of(public_key)
        return SignatureCheck(
            False, False, f"{sig}: not signed by this host's key {mine} (says {signer})"
        )
    return SignatureCheck(True, False, f"{sig}: valid, key {fingerprint_of(public_key)}")


def check_with_host_key(config: Path, key_path: Path) -> SignatureCheck:
    """check_config against the host key at `key_path` (a key that cannot be loaded is a
    failed check that says why)."""
    from patchguard.signing import KeyFileError

    if not signature_path(config).exists():  # unsigned: no key is needed to say so
        return check_config(config, b"")
    try:
        public = HostKey.load(key_path).public_key_bytes()
    except KeyFileError as exc:
        return SignatureCheck(False, False, f"cannot check the config signature: {exc}")
    return check_config(config, public)
