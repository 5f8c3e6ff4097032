"""What a host sends the fleet server, as both sides encode and check it.

A message is an envelope `{"body": TEXT, "signature": HEX}`. TEXT is the canonical JSON
(`policy.chain.canonical`: sorted keys, no spaces, ASCII) of

    {"format": "patchguard.fleet/1", "host": FINGERPRINT, "seq": N, "id": 32 hex digits,
     "time": ISO 8601 UTC, "kind": KIND, "boot_id": TEXT|null, "baseline_digest": HEX|null,
     "payload": {...}}

and the signature is the host key's ed25519 signature of TEXT's bytes. `seq` counts up from 1
per host (the server refuses a lower or repeated one), `id` makes a resend idempotent (the
server stores it once), `baseline_digest` is the SHA-256 of the baseline file the host checks
against. Payload by kind: report, sweep, finding: `{"findings": [...], "gaps": N}`;
heartbeat: `{"interval": SECONDS}`; stop: `{"reason": TEXT}`; baseline-rotated:
`{"reason": TEXT}` (the body's baseline_digest is the new one).

The server answers an enrolment with its own public key, which the host pins; policy
documents the server serves are signed by it (`signed_document`, `check_document`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from patchguard.policy.chain import canonical
from patchguard.signing import HostKey, fingerprint_of, verify_signature

FORMAT = "patchguard.fleet/1"
ENROL_FORMAT = "patchguard.enrol/1"
KINDS = ("report", "heartbeat", "sweep", "finding", "stop", "baseline-rotated")
MAX_BODY = 1024 * 1024  # bytes in one request; the server refuses more before parsing


@dataclass(frozen=True)
class Message:
    host: str
    seq: int
    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    baseline_digest: str | None = None
    boot_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    def body(self) -> str:
        return canonical(
            {
                "format": FORMAT,
                "host": self.host,
                "seq": self.seq,
                "id": self.id,
                "time": self.time,
                "kind": self.kind,
                "boot_id": self.boot_id,
                "baseline_digest": self.baseline_digest,
                "payload": dict(self.payload),
            }
        )


def envelope(message: Message, key: HostKey) -> bytes:
    """The signed request body for `message`."""
    text = message.body()
    signature = key.sign(text.encode("ascii")).hex()
    return json.dumps({"body": text, "signature": signature}).encode("ascii")


def enrol_proof(name: str, public_key: str, key: HostKey) -> str:
    """The host's signature over its enrolment: it holds the private half of the key."""
    text = canonical({"format": ENROL_FORMAT, "name": name, "public_key": public_key})
    return key.sign(text.encode("ascii")).hex()


def check_enrol_proof(name: str, public_key: str, proof: str) -> bool:
    text = canonical({"format": ENROL_FORMAT, "name": name, "public_key": public_key})
    return verify_signature(bytes.fromhex(public_key), text.encode("ascii"), bytes.fromhex(proof))


def signed_document(document: Mapping[str, Any], key: HostKey) -> dict[str, Any]:
    """`{"document": ..., "signer": FINGERPRINT, "signature": HEX}` over canonical(document)."""
    signature = key.sign(canonical(dict(document)).encode("ascii")).hex()
    return {"document": dict(document), "signer": key.fingerprint(), "signature": signature}


def check_document(signed: object, server_key: bytes) -> dict[str, Any]:
    """The document inside `signed` if the pinned server key signed it; ValueError if not."""
    if not isinstance(signed, dict) or set(signed) != {"document", "signer", "signature"}:
        raise ValueError("not a signed server document")
    document, signature = signed["document"], signed["signature"]
    if not isinstance(document, dict) or not isinstance(signature, str):
        raise ValueError("not a signed server document")
    if signed["signer"] != fingerprint_of(server_key):
        raise ValueError(f"signed by {signed['signer']!r}, not the pinned server key")
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raise ValueError("the signature is not hex") from None
    if not verify_signature(server_key, canonical(document).encode("ascii"), raw):
        raise ValueError("the server's signature does not verify")
    return document
