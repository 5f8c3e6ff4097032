"""The real guard with a `[server]` table, against the real server: it reports its sweep and
heartbeats, a bad `[server]` table is one line at `config check`, and `systemctl stop` (SIGTERM)
reaches the server as a clean stop within the guard's 2 s, so the host is `stopped`, never
`silent`: also while the guard is still sending its sweep's findings, and with the machine
made busy by processes that spin and fsync (started and stopped here) around the stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_support import ServerProcess, enrolled_host, make_token, operator

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the guard reads the kernel as root")


def host_view(server: ServerProcess, token: str, fingerprint: str) -> dict[str, Any]:
    detail: dict[str, Any] = operator(f"{server.url}/api/v1/hosts/{fingerprint}", token)[1]
    return detail


def guard_config(tmp_path: Path, key: Path, state: Path, server_table: str) -> Path:
    config = tmp_path / "guard.toml"
    config.write_text(
        f'[guard]\nbaseline = ""\nledger = ""\nkey = "{key}"\nspool = "{tmp_path / "spool"}"\n'
        f"trigger_interval = 1.0\nsweep_mean = 600\n[server]\n{server_table}"
    )
    return config


SPIN = "while True: pass"
FSYNC = (  # rewrites a file and waits for the disk, as a busy database or build does
    "import os, sys\nwhile True:\n    with open(sys.argv[1], 'wb') as f:\n"
    "        f.write(os.urandom(1 << 20)); f.flush(); os.fsync(f.fileno())"
)


@contextlib.contextmanager
def busy_machine(tmp_path: Path) -> Iterator[None]:
    """Two spinning processes per CPU and one that fsyncs, until the block ends."""
    cpus = os.cpu_count() or 1
    scripts = [["-c", SPIN]] * (2 * cpus) + [["-c", FSYNC, str(tmp_path / "fsync.bin")]]
    busy = [subprocess.Popen([sys.executable, *argv]) for argv in scripts]
    try:
        time.sleep(1)  # the load is there before the stop
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait(timeout=30)


def test_the_guard_reports_its_sweep_and_its_stop(server: ServerProcess, tmp_path: Path) -> None:
    host = enrolled_host(server, tmp_path)
    token = make_token(server.db_url, "operator")
    key = host.directory.parent / "host.key"
    config = guard_config(tmp_path, key, host.directory, f'state_dir = "{host.directory}"\n')
    guard = subprocess.Popen(
        [sys.executable, "-m", "patchguard.cli", "guard", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            detail = host_view(server, token, host.fingerprint)
            if detail.get("last_clean_sweep_at") or detail.get("findings"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the server never got the guard's sweep")
    finally:
        with busy_machine(tmp_path):
            guard.send_signal(signal.SIGTERM)
            out, err = guard.communicate(timeout=60)
    assert guard.returncode == 0, err
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert "start" in events and "stop" in events and "server-unavailable" not in events
    # read once, right after the guard exited: the stop arrived while the guard ran
    assert host_view(server, token, host.fingerprint)["status"] == "stopped", err


def test_a_bad_server_table_is_one_line_at_config_check(tmp_path: Path) -> None:
    from patchguard.guard.config import load_config

    config = guard_config(tmp_path, tmp_path / "host.key", tmp_path, f'state_dir = "{tmp_path}"\n')
    assert load_config(config).server is not None
    bad = guard_config(tmp_path, tmp_path / "host.key", tmp_path, "heartbeat = 0\n")
    done = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "server.heartbeat" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
