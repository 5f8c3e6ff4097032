"""Sealed scan documents carried in host reports, on SQLite and on PostgreSQL: the server checks
each document's seal against the host's enrolled key, stores the verdict, and an altered one
(lines dropped by a rootkit on their way out, a changed byte, a truncation, another key's
signature) is stored flagged, raises a critical alert and shows on the operator's host page."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fleet_support import ServerProcess, enrolled_host, make_token
from sqlalchemy import select

from patchguard.fleet import client
from patchguard.fleet.report import MAX_SCAN, from_scan
from patchguard.fleet.wire import Message, envelope
from patchguard.sealed_report import seal
from patchguard.server.db import Alert, FindingRow, Report, engine, session_factory
from patchguard.server.ingest import check
from patchguard.signing import HostKey

TAINT_FINDING = {
    "surface": "posture",
    "technique": "taint-mismatch",
    "severity": "high",
    "subject": "kernel taint flags",
    "summary": "the module taint flags and the kernel's tainted mask disagree",
    "disposition": "tampering",
    "attack_id": "T1014",
    "evidence": {"tainted_mask": 12288, "modules_taint": 4096},
}
HOOK_FINDING = {
    "surface": "ebpf",
    "technique": "rootkit-helper",
    "severity": "critical",
    "subject": "prog 42 (kill_hook)",
    "summary": "a kprobe program calls bpf_override_return",
    "disposition": "suspicious",
    "attack_id": "T1014",
    "evidence": {"prog_id": 42, "helpers": ["bpf_override_return"]},
}


def scan_text(key: HostKey) -> str:
    """A `patchguard scan --json` document as the command prints it (sealed, indent 2)."""
    doc: dict[str, Any] = {
        "schema": "patchguard.scan/1",
        "command": "scan",
        "host": "web-1",
        "kernel_release": "6.1.0-18-amd64",
        "boot_id": "3f1c2e9a-7b7d-4c51-9c1e-2d0f6a9b8e41",
        "started_at": "2026-12-07T08:00:00+00:00",
        "seconds": 1.5,
        "process_seconds": 1.9,
        "memory_reader": "ebpf",
        "summary": {"info": 0, "low": 0, "medium": 0, "high": 1, "critical": 1},
        "surfaces": [{"name": "posture", "title": "Posture", "status": "ok", "counts": {}}],
        "findings": [HOOK_FINDING, TAINT_FINDING],
        "unavailable": [{"surface": "entry", "what": "MSRs", "reason": "no msr module"}],
    }
    return json.dumps(seal(doc, key), indent=2) + "\n"


def altered(text: str, how: str) -> str:
    if how == "lines with 'taint' dropped":
        return "".join(line for line in text.splitlines(True) if "taint" not in line)
    if how == "one byte changed":
        at = text.index("kill_hook")
        return text[:at] + "K" + text[at + 1 :]
    if how == "truncated":
        return text[: len(text) * 2 // 3]
    assert how == "signed by another key"
    return json.dumps(seal(json.loads(text), HostKey.generate()), indent=2)


ALTERATIONS = (
    "lines with 'taint' dropped",
    "one byte changed",
    "truncated",
    "signed by another key",
)


def stored(db_url: str) -> list[tuple[int, str | None, str | None]]:
    bound = engine(db_url)
    try:
        with session_factory(bound)() as session:
            query = select(Report.seq, Report.seal, Report.seal_detail).order_by(Report.seq)
            return [(seq, word, detail) for seq, word, detail in session.execute(query)]
    finally:
        bound.dispose()


def alerts(db_url: str) -> list[dict[str, Any]]:
    bound = engine(db_url)
    try:
        with session_factory(bound)() as session:
            found = session.scalars(select(Alert).where(Alert.kind == "report-altered"))
            return [dict(a.evidence, severity=a.severity) for a in found]
    finally:
        bound.dispose()


def host_page(server: ServerProcess, fingerprint: str) -> str:
    token = make_token(server.db_url, "operator")
    request = urllib.request.Request(
        f"{server.url}/operator/hosts/{fingerprint}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return str(answer.read().decode())


def test_an_intact_scan_sent_by_the_report_command_is_stored_as_intact(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    scan = tmp_path / "scan.json"
    scan.write_text(scan_text(host.key))
    argv = [sys.executable, "-m", "patchguard.cli", "report", "--scan-json", str(scan)]
    argv += ["--key", str(host.directory.parent / "host.key"), "--state-dir", str(host.directory)]
    argv += ["--baseline", str(tmp_path / "no-baseline.zip")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "report (2 findings) #1 queued; 1 sent, 0 waiting" in done.stdout
    [(seq, word, detail)] = stored(server.db_url)
    assert (seq, word) == (1, "intact")
    assert detail is not None and f"signed by host key {host.fingerprint}" in detail
    assert alerts(server.db_url) == []
    bound = engine(server.db_url)
    try:
        with session_factory(bound)() as session:
            techniques = sorted(session.scalars(select(FindingRow.technique)))
    finally:
        bound.dispose()
    assert techniques == ["rootkit-helper", "taint-mismatch"]
    page = host_page(server, host.fingerprint)
    assert 'report #1 <span class="tag">intact</span>' in page
    assert "ALTERED" not in page


def test_altered_scans_are_stored_flagged_alerted_and_shown(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    original = scan_text(host.key)
    for how in ALTERATIONS:
        found = from_scan(how, altered(original, how).encode())
        payload = {"findings": found.findings, "gaps": found.gaps, "scan": found.scan}
        client.queue(host.directory, host.key, "report", payload)
    delivered = client.deliver(host.directory)
    assert (delivered.sent, delivered.rejected) == (len(ALTERATIONS), ())
    rows = stored(server.db_url)
    assert [(seq, word) for seq, word, _ in rows] == [(n, "altered") for n in (1, 2, 3, 4)]
    details = [detail or "" for _, _, detail in rows]
    assert "where the seal says" in details[0]  # still JSON: its length no longer matches
    assert "SHA-256" in details[1]  # the same length, another digest
    assert "not valid JSON any more" in details[2]
    assert f"not host key {host.fingerprint}" in details[3]
    raised = alerts(server.db_url)
    assert sorted(a["seq"] for a in raised) == [1, 2, 3, 4]
    assert {a["severity"] for a in raised} == {"critical"}
    page = host_page(server, host.fingerprint)
    assert page.count("ALTERED") == 4
    assert page.count("report-altered") == 4
    for detail in details:
        assert html.escape(detail) in page


def test_a_resent_altered_report_is_stored_and_alerted_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    text = altered(scan_text(host.key), "truncated")
    client.queue(host.directory, host.key, "report", {"scan": text})
    [path] = client.spool_of(host.directory).pending()
    body = path.read_bytes()
    assert client.deliver(host.directory).sent == 1
    again = client.request(f"{server.url}/api/v1/reports", body)
    assert (again.status, again.data.get("duplicate")) == (200, True)
    assert len(stored(server.db_url)) == 1
    assert len(alerts(server.db_url)) == 1


def test_reading_a_scan_document_for_a_report(tmp_path: Path) -> None:
    key = HostKey.generate()
    text = scan_text(key)
    found = from_scan("scan.json", text.encode())
    assert [f["technique"] for f in found.findings] == ["rootkit-helper", "taint-mismatch"]
    assert (found.gaps, found.scan, found.notes) == (1, text, ())
    broken = from_scan("scan.json", text[:100].encode())
    assert (broken.findings, broken.scan) == ([], text[:100])
    assert "not JSON" in broken.notes[0]
    odd = b'{"findings": [{"surface": "x"}, 5], "boot_id": "' + b"b" * 65 + b'"}\xff'
    assert from_scan("odd", odd).scan == odd.decode("utf-8", "replace")
    doc = json.loads(text)
    doc["findings"][1]["subject"] = "a\x00b"
    nul = from_scan("nul.json", json.dumps(doc).encode())
    assert [f["technique"] for f in nul.findings] == ["rootkit-helper"]
    assert "1 entries are not findings" in nul.notes[0]
    with pytest.raises(client.FleetError, match=f"more than {MAX_SCAN}"):
        from_scan("big.json", b" " * (MAX_SCAN + 1))


def test_a_scan_with_bytes_that_are_not_utf8_is_taken_and_found_altered() -> None:
    key = HostKey.generate()
    text = scan_text(key).encode()
    at = text.index(b"kill_hook")
    found = from_scan("scan.json", text[:at] + b"\xff" + text[at + 1 :])
    payload = {"findings": found.findings, "gaps": found.gaps, "scan": found.scan}
    raw = envelope(Message(key.fingerprint(), 1, "report", payload), key)
    checked = check(raw, lambda _: key.public_key_bytes().hex())
    assert checked.seal is not None and not checked.seal.intact
    assert "SHA-256" in checked.seal.detail or "bytes where the seal says" in checked.seal.detail
