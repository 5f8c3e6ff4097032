"""The guard told by the kernel: its own program on the syscall-exit tracepoints writes to a
ring buffer it waits on, so a program loaded while it runs is reported at once, not at the next
poll. The poll is set to 10 s here and the report must say the ring buffer woke it (the
mechanism is asserted, never a time); the guard's own program is never a finding of its own,
it is gone when the guard stops, and another scan shows it allowed under the manifest the
project ships.

A write to a control file the guard watches (guard/control_files.py) wakes it through inotify.
This host's tracefs is mounted read-only, so the write here goes to the posture trigger's
/proc/sys/kernel/tainted, and writes 0, which adds no flag; the tracefs writes (a kprobe in
kprobe_events) are proven in the lab (tests/lab/test_lab_guard_wake.py).

Only the bpf(2) commands that add, change or remove a hook ring: a process holding the guard's
programs reads the ring's records (syscall number, tgid) and this test's own process is
looked for among them, so other processes on the host do not matter."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp
from support.manifests import MANIFESTS, approved_ledger, scan_ebpf
from test_guard_live import GuardProcess, is_prog

from patchguard.kernel.bpf import syscall as bpf

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
BPF_MAP_TYPE_ARRAY = 2
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
    assert own in start["told_by_prog_ids"] and len(start["told_by_prog_ids"]) == 2
    with bp.attach_raw_tracepoint("sys_enter", "pg_g_ring") as prog:
        event = g.wait_event(is_prog(prog.prog_id), POLL * 0.6)
        assert event is not None, "no finding for the new program before the poll was due"
        assert event["why"] == "trigger:bpf"
        assert event["woken_by"] == "ringbuf"
    mine = [e for e in g.seen for i in start["told_by_prog_ids"] if is_prog(i)(e)]
    assert not mine, "the guard reported its own programs"


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
    "print(*events.own_prog_ids, flush=True)\n"
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
        prog_ids = [int(i) for i in holder.stdout.readline().split()]
        ledger = approved_ledger(tmp_path, MANIFESTS / "patchguard-guard.toml", "patchguard")
        _, doc = scan_ebpf(ledger)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder detaches its program and exits
        holder.wait(timeout=30)
    assert len(prog_ids) == 2, prog_ids  # pg_guard_wake and pg_guard_bpfcmd
    for prog_id in prog_ids:
        mine = [f for f in doc["findings"] if f["evidence"].get("prog_id") == prog_id]
        assert mine, f"the scan saw the guard's program {prog_id}"
        assert all(f["disposition"] == "allowed" for f in mine), mine
        assert all(f["severity"] == "info" or f["technique"] != "exception-mismatch" for f in mine)
        assert bp.wait_gone(prog_id)


HOLD_RECORDS = (
    "import json, sys\n"
    "from patchguard.guard.kernel_events import KernelEvents\n"
    "events = KernelEvents.open()\n"
    "print(json.dumps(events.own_prog_ids), flush=True)\n"
    "for line in sys.stdin:\n"
    "    pid = int(line)\n"
    "    print(json.dumps([nr for nr, tgid in events.records() if tgid == pid]), flush=True)\n"
    "events.close()\n"
)


class RingReader:
    """A process holding the guard's programs and ring buffer (its own calls are left out, as
    the guard's are): `told()` is what this test's process rang since the last look."""

    def __init__(self) -> None:
        src = Path(__file__).resolve().parents[2] / "src"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_RECORDS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(src)},
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.prog_ids: list[int] = json.loads(self.stdout.readline())

    def told(self) -> list[int]:
        self.stdin.write(f"{os.getpid()}\n")
        self.stdin.flush()
        found: list[int] = json.loads(self.stdout.readline())
        return found

    def close(self) -> None:
        self.stdin.close()  # the holder detaches its programs and exits
        self.proc.wait(timeout=30)


@pytest.fixture
def ring() -> Iterator[RingReader]:
    reader = RingReader()
    try:
        yield reader
    finally:
        reader.close()
    for prog_id in reader.prog_ids:
        assert bp.wait_gone(prog_id)


def test_bpf_queries_that_return_an_fd_do_not_ring(ring: RingReader) -> None:
    ring.told()  # whatever came before
    list(bpf.next_ids(bpf.BPF_PROG_GET_NEXT_ID, "PROG_GET_NEXT_ID"))
    os.close(bpf.fd_by_id(bpf.BPF_PROG_GET_FD_BY_ID, ring.prog_ids[0], "PROG_GET_FD_BY_ID"))
    os.close(bpf.map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1, "pg_g_query"))
    assert ring.told() == []


def test_a_program_loaded_and_attached_rings_once_a_command(ring: RingReader) -> None:
    ring.told()
    with bp.attach_raw_tracepoint("sys_enter", "pg_g_cmds"):  # PROG_LOAD, RAW_TRACEPOINT_OPEN
        pass
    assert ring.told() == [bpf.NR_BPF, bpf.NR_BPF]


def test_a_failed_load_does_not_ring(ring: RingReader) -> None:
    ring.told()
    with pytest.raises(bpf.BpfError):
        bpf.prog_load(bp.BPF_PROG_TYPE_RAW_TRACEPOINT, b"", "pg_g_bad")  # no instructions
    assert ring.told() == []
