"""Reports that protect themselves (sealed_report.py, `patchguard verify-report`):
a sealed report verifies; one with a line dropped, a value changed, the seal missing, a
digest recomputed without the signature, or signed by another key does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from patchguard.cli import main
from patchguard.sealed_report import SEAL, seal, verify
from patchguard.signing import HostKey

DOC: dict[str, Any] = {
    "schema": "patchguard.scan/1",
    "command": "scan",
    "summary": {"critical": 1},
    "findings": [{"subject": "taint O", "summary": "The kernel is tainted O (ünïcode)"}],
    "seconds": 0.1 + 0.2,
}


def _text(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


def test_a_sealed_report_verifies_and_keeps_its_fields() -> None:
    key = HostKey.generate()
    sealed = seal(DOC, key)
    assert list(sealed)[:-1] == list(DOC) and list(sealed)[-1] == SEAL
    verdict = verify(_text(sealed), key.public_key_bytes())
    assert verdict.intact and f"signed by host key {key.fingerprint()}" in verdict.detail


def test_a_dropped_line_is_altered() -> None:
    text = _text(seal(DOC, None))
    dropped = b"\n".join(line for line in text.split(b"\n") if b"taint" not in line)
    assert not verify(dropped, None).intact  # still JSON here: the digest tells
    cut = text[: len(text) // 2]
    verdict = verify(cut, None)
    assert not verdict.intact and "not valid JSON" in verdict.detail


def test_a_changed_value_is_altered() -> None:
    sealed = seal(DOC, None)
    sealed["summary"] = {"critical": 0}
    verdict = verify(_text(sealed), None)
    assert not verdict.intact and "SHA-256" in verdict.detail


def test_a_missing_seal_is_said() -> None:
    assert not verify(_text(DOC), None).intact


def test_a_rewritten_digest_without_signature_is_refused_where_a_host_key_exists() -> None:
    key = HostKey.generate()
    forged = dict(DOC, summary={"critical": 0})
    rewritten = seal(forged, None)  # the forger recomputes the digest, cannot sign
    assert verify(_text(rewritten), None).intact  # without a key nothing more can be said
    assert not verify(_text(rewritten), key.public_key_bytes()).intact


def test_another_keys_signature_is_refused() -> None:
    mine, theirs = HostKey.generate(), HostKey.generate()
    verdict = verify(_text(seal(DOC, theirs)), mine.public_key_bytes())
    assert not verdict.intact and mine.fingerprint() in verdict.detail


def test_verify_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "host.key"
    key = HostKey.load_or_create(key_path)
    report = tmp_path / "report.json"
    report.write_bytes(_text(seal(DOC, key)))
    assert main(["verify-report", str(report), "--key", str(key_path)]) == 0
    assert "intact" in capsys.readouterr().out
    report.write_bytes(report.read_bytes().replace(b'"critical": 1', b'"critical": 0'))
    assert main(["verify-report", str(report), "--key", str(key_path)]) == 1
    assert "altered" in capsys.readouterr().out
    assert main(["verify-report", str(tmp_path / "missing\x1b[2J"), "--key", str(key_path)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "missing\\x1b[2J" in err
