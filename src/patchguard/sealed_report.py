"""Reports that protect themselves: `scan --json` and `check --json` carry their own length,
SHA-256 and, where the host key exists, an ed25519 signature, so that a report altered on its
way out (a rootkit seen in the wild deleted every line containing "taint" from what processes
wrote) is told from one that was not (`patchguard verify-report FILE`).

The seal is the document's last member, `integrity`. What it covers is the document without
that member in canonical form: keys sorted, no whitespace, ASCII only (`json.dumps(doc,
sort_keys=True, separators=(",", ":"), ensure_ascii=True)`), UTF-8. A report whose text no
longer parses, whose seal is missing, or whose canonical body differs in length or digest was
altered; a signature is checked against the host key given (default the host's own).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.signing import HostKey, KeyFileError, fingerprint_of, verify_signature

SEAL = "integrity"
SCHEME = "patchguard.report-seal/1"
DOMAIN = b"patchguard report seal/1\n"  # signed before the body: a report signature only
MAX_REPORT = 256 << 20  # a scan report is a few MB; anything bigger is refused unread


def canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != SEAL}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(doc: dict[str, Any], key: HostKey | None) -> dict[str, Any]:
    """The document with its seal as the last member."""
    body = canonical(doc)
    record: dict[str, Any] = {
        "scheme": SCHEME,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "signature": None,
        "key_fingerprint": None,
    }
    if key is not None:
        record["signature"] = base64.b64encode(key.sign(DOMAIN + body)).decode()
        record["key_fingerprint"] = key.fingerprint()
    return {**{k: v for k, v in doc.items() if k != SEAL}, SEAL: record}


def host_key_if_any(path: Path) -> HostKey | None:
    """The host key if it exists and can be read; a report is never refused for want of it."""
    if not path.exists():  # no key: no need to load the signing library at all
        return None
    try:
        return HostKey.load(path)
    except KeyFileError:
        return None


@dataclass(frozen=True)
class Verdict:
    intact: bool
    detail: str  # one line


def _record(doc: object) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    record = doc.get(SEAL)
    if not isinstance(record, dict) or record.get("scheme") != SCHEME:
        return None
    return record


def verify(text: bytes, public_key: bytes | None) -> Verdict:
    """Whether `text` is a report as patchguard wrote it (see the module docstring)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return Verdict(False, f"altered: not valid JSON any more ({exc.msg} at byte {exc.pos})")
    except UnicodeDecodeError as exc:
        return Verdict(False, f"altered: not UTF-8 any more (byte {exc.start})")
    record = _record(doc)
    if record is None:
        return Verdict(False, f"altered or unsealed: no {SEAL} record of {SCHEME}")
    assert isinstance(doc, dict)
    body = canonical(doc)
    if record.get("length") != len(body):
        return Verdict(
            False, f"altered: {len(body)} bytes where the seal says {record.get('length')}"
        )
    digest = hashlib.sha256(body).hexdigest()
    if record.get("sha256") != digest:
        return Verdict(
            False, f"altered: SHA-256 {digest} where the seal says {record.get('sha256')}"
        )
    return _signed(record, body, public_key)


def _signed(record: dict[str, Any], body: bytes, public_key: bytes | None) -> Verdict:
    said = f"intact: {len(body)} bytes, SHA-256 {record['sha256']}"
    signature = record.get("signature")
    if signature is None and public_key is not None:
        # anyone who rewrites a report can recompute its digest and drop the signature
        return Verdict(
            False,
            f"unsigned although host key {fingerprint_of(public_key)} exists: it cannot be "
            "told from a report rewritten with a new digest",
        )
    if signature is None:
        return Verdict(True, f"{said}; unsigned (no host key when it was written or now)")
    if public_key is None:
        return Verdict(True, f"{said}; signature not checked (no host key given)")
    try:
        raw = base64.b64decode(str(signature), validate=True)
    except (binascii.Error, ValueError):
        return Verdict(False, "altered: the signature is not base64")
    fingerprint = fingerprint_of(public_key)
    if not verify_signature(public_key, DOMAIN + body, raw):
        return Verdict(False, f"altered or signed by another key: not host key {fingerprint}")
    return Verdict(True, f"{said}; signed by host key {fingerprint}")
