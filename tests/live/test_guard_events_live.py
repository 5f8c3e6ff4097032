"""The guard told by the kernel: its own program on the syscall-exit tracepoints writes to a
ring buffer it waits on, so a program loaded while it runs is reported at once, not at the next
poll. The poll is set to 10 s here and the report must say the ring buffer woke it (the
mechanism is asserted, never a time); the guard's own program is never a finding of its own,
it is gone when the guard stops, and another scan shows it allowed under the manifest the
project ships.

A write to a control file the guard watches (guard/control_files.py) wakes it through inotify.
This host's tracefs is mounted read-only, so the write here goes to the posture trigger's
/proc/sys/kernel/tainted, and writes 0, which adds no flag; the tracefs writes (a kprobe in
kprobe_events) are proven in the lab (tests/lab/test_lab_guard_wake.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp
from support.manifests import MANIFESTS, approved_ledger, scan_ebpf
from test_guard_live import GuardProcess, is_prog

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
POLL = 10.0  # the fallback poll (the longest a config allows): far longer than the wait below


TAINTED = "/proc/sys/kernel/tainted"


@pytest.fixture
def metrics_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def guard(tmp_path: Path, metrics_port: int) -> Iterator[tuple[GuardProcess, dict[str, Any]]]:
    config = tmp_path / "guard.toml"
    config.write_text(
        f'[guard]\nbaseline = ""\nspool = "{tmp_path / "spool"}"\n'
        f"trigger_interval = {POLL}\nsweep_mean = 600\n"
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    )
    g = GuardProcess(config)
    try:
        start = g.wait_event(lambda e: e.get("event") == "start", 60)
        assert start is not None, "".join(g.stderr)
        assert g.wait_event(lambda e: e.get("event") == "sweep", 120), "no first sweep"
        yield g, start
    finally:
        code = g.stop()
        assert code == 0, "".join(g.stderr) or code


def test_a_program_loaded_while_the_guard_runs_is_told_by_the_ring_buffer(
    guard: tuple[GuardProcess, dict[str, Any]],
) -> None:
    g, start = guard
    if start["told_by"] is None:
        pytest.skip(f"the guard's own program cannot load here: {start['told_by_unavailable']}")
    assert "sys_exit_bpf" in start["told_by"]
    own = start["told_by_prog_id"]
    with bp.attach_raw_tracepoint("sys_enter", "pg_g_ring") as prog:
        event = g.wait_event(is_prog(prog.prog_id), POLL * 0.6)
        assert event is not None, "no finding for the new program before the poll was due"
        assert event["why"] == "trigger:bpf"
        assert event["woken_by"] == "ringbuf"
    assert not [e for e in g.seen if is_prog(own)(e)], "the guard reported its own program"


def wakes(port: int, by: str) -> float:
    """The guard's patchguard_wakes counter for `by`, read from its metrics endpoint."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf'^patchguard_wakes_total{{by="{by}"}} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_write_to_a_watched_control_file_wakes_the_guard_through_inotify(
    guard: tuple[GuardProcess, dict[str, Any]], metrics_port: int
) -> None:
    g, start = guard
    assert start["watched_files"] is not None, start["watched_files_unavailable"]
    assert TAINTED in start["watched_files"]
    assert "/sys/kernel/tracing/current_tracer" in start["watched_files"]
    before = wakes(metrics_port, "inotify")
    with open(TAINTED, "w") as tainted:
        tainted.write("0\n")  # taints with no flag: the write is all this test needs
    deadline = time.monotonic() + POLL * 0.6
    while wakes(metrics_port, "inotify") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wakes(metrics_port, "inotify") > before, "no inotify wake before the poll was due"
    g.wait_event(lambda e: False, 1.0)  # what the wake's trigger check reports
    posture = [e for e in g.seen if e.get("why") == "trigger:posture"]
    assert not posture, "a write that adds no taint flag fired the posture trigger"


def test_the_guards_program_is_gone_when_it_stops(tmp_path: Path) -> None:
    config = tmp_path / "guard.toml"
    config.write_text(f'[guard]\nbaseline = ""\nspool = "{tmp_path / "spool"}"\nsweep_mean = 600\n')
    g = GuardProcess(config)
    try:
        start = g.wait_event(lambda e: e.get("event") == "start", 60)
        assert start is not None, "".join(g.stderr)
    finally:
        assert g.stop() == 0, "".join(g.stderr)
    if start["told_by_prog_id"] is None:
        pytest.skip(f"the guard's own program cannot load here: {start['told_by_unavailable']}")
    assert bp.wait_gone(start["told_by_prog_id"])


SYSTEM_PYTHON = "/usr/bin/python3.11"  # the loader policy/manifests/patchguard-guard.toml names
HOLD = (
    "import sys\n"
    "from patchguard.guard.kernel_events import KernelEvents\n"
    "events = KernelEvents.open()\n"
    "print(events.prog_id, flush=True)\n"
    "sys.stdin.read()\n"
    "events.close()\n"
)


def test_the_shipped_manifest_shows_the_guards_program_allowed(tmp_path: Path) -> None:
    """Another scan of the host sees the guard's program; under the approved manifest it is
    allowed, and nothing about it is above info."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} is not installed: the manifest's loader")
    src = Path(__file__).resolve().parents[2] / "src"
    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", HOLD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    try:
        assert holder.stdout is not None
        prog_id = int(holder.stdout.readline())
        ledger = approved_ledger(tmp_path, MANIFESTS / "patchguard-guard.toml", "patchguard")
        _, doc = scan_ebpf(ledger)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder detaches its program and exits
        holder.wait(timeout=30)
    mine = [f for f in doc["findings"] if f["evidence"].get("prog_id") == prog_id]
    assert mine, "the scan saw the guard's program"
    assert all(f["disposition"] == "allowed" for f in mine), mine
    assert all(f["severity"] == "info" or f["technique"] != "exception-mismatch" for f in mine)
    assert bp.wait_gone(prog_id)
