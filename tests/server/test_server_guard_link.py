"""The guard's link to the server: heartbeats on time, sweeps and findings as signed
messages, a clean stop that keeps the host from being called silent, and a spool that waits
while the server is down."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fleet_support import ServerProcess, enrolled_host, make_token, operator

from patchguard.findings import Disposition, Finding, Severity
from patchguard.fleet.guard_link import ServerLink, ServerSettings, server_settings

HOOK = Finding(
    surface="ebpf",
    technique="rootkit-helper",
    severity=Severity.HIGH,
    subject="prog 42 (kill_hook)",
    summary="a kprobe program calls bpf_override_return",
    disposition=Disposition.SUSPICIOUS,
    evidence={"prog_id": 42},
)


def host_view(server: ServerProcess, token: str, fingerprint: str) -> dict[str, Any]:
    detail: dict[str, Any] = operator(f"{server.url}/api/v1/hosts/{fingerprint}", token)[1]
    return detail


def wait_until(check: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_guard_link_heartbeats_sweeps_and_stops(server: ServerProcess, tmp_path: Path) -> None:
    host = enrolled_host(server, tmp_path)
    token = make_token(server.db_url, "operator")
    link = ServerLink(ServerSettings(host.directory, heartbeat=1), host.key, None)
    try:
        link.sweep([HOOK], gaps=1)
        link.findings([HOOK])
        wait_until(lambda: host_view(server, token, host.fingerprint)["last_seq"] >= 5)
    finally:
        link.stop("systemctl stop patchguard-guard")
    detail = host_view(server, token, host.fingerprint)
    assert detail["status"] == "stopped" and detail["heartbeat_interval"] == 1
    assert len(detail["findings"]) == 2
    time.sleep(3.5)  # more than 3 missed heartbeats: still stopped, never silent
    assert host_view(server, token, host.fingerprint)["status"] == "stopped"
    assert operator(f"{server.url}/api/v1/alerts", token)[1]["alerts"] == []


def test_guard_link_spools_while_the_server_is_down(server: ServerProcess, tmp_path: Path) -> None:
    host = enrolled_host(server, tmp_path)
    server.stop()
    link = ServerLink(ServerSettings(host.directory, heartbeat=1), host.key, None)
    try:
        link.sweep([])
        time.sleep(1.5)
        assert link.last is not None and link.last.unreachable and link.last.pending >= 2
        server.start()
        token = make_token(server.db_url, "operator")
        wait_until(lambda: link.last is not None and link.last.pending == 0)
        detail = host_view(server, token, host.fingerprint)
        assert detail["status"] == "active" and detail["last_clean_sweep_at"] is not None
    finally:
        link.stop()


def test_server_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    assert server_settings({}, path) == ServerSettings(Path("/var/lib/patchguard"), 60)
    for table, key in (
        ({"heartbeat": 0}, "server.heartbeat"),
        ({"heartbeat": True}, "server.heartbeat"),
        ({"state_dir": 3}, "server.state_dir"),
        ({"url": "x"}, "server.url: unknown key"),
    ):
        with pytest.raises(ValueError, match=key):
            server_settings(table, path)


def test_a_rotation_the_guard_accepted_raises_no_alert(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The guard's `rotated` is the signed baseline-rotated message the server takes a new
    digest from; the same change without it is a baseline-changed alert."""
    host = enrolled_host(server, tmp_path)
    token = make_token(server.db_url, "operator")
    baseline = tmp_path / "baseline.zip"
    baseline.write_bytes(b"first")
    link = ServerLink(ServerSettings(host.directory, heartbeat=60), host.key, baseline)
    try:
        link.sweep([])
        wait_until(lambda: host_view(server, token, host.fingerprint)["last_seq"] >= 2)
        baseline.write_bytes(b"second, rotated through the CLI")
        link.rotated("kernel 6.9 installed")
        wait_until(lambda: host_view(server, token, host.fingerprint)["last_seq"] >= 3)
        assert operator(f"{server.url}/api/v1/alerts", token)[1]["alerts"] == []
        baseline.write_bytes(b"third, behind the guard's back")
        link.sweep([])
        wait_until(lambda: host_view(server, token, host.fingerprint)["last_seq"] >= 4)
    finally:
        link.stop()
    alerts = operator(f"{server.url}/api/v1/alerts", token)[1]["alerts"]
    assert [a["kind"] for a in alerts] == ["baseline-changed"]
