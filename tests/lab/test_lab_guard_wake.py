"""The guard woken by the kernel in the lab guest (Debian's 6.1, which has modules and
kprobes; one boot running guest_guard_wake.py): with its trigger poll every 10 s, a kprobe
written to tracefs kprobe_events and a uprobe to uprobe_events are reported woken by inotify
(guard/control_files.py; the uprobe through the dynamic_events trigger), and so is a function
tracer set in a tracefs instance made while the guard runs, and
a module load and a kprobe opened through perf's kprobe PMU woken by its ring buffer
(guard/kernel_events.py), each before the poll. What woke the guard is asserted, never a
time (bench/guard_guest.py measures the times)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.lab_guest import Results, run_lab

pytestmark = pytest.mark.lab
POLL = 10.0
WOKEN_BY = {
    "module": "ringbuf",
    "kprobe_events": "inotify",
    "perf_kprobe": "ringbuf",
    "uprobe_events": "inotify",
    "instance_tracer": "inotify",
}


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    results = tmp_path_factory.mktemp("guard-wake")
    command = ["python3", "/src/tests/lab/guest_guard_wake.py", "/results", "2", str(POLL)]
    run = run_lab(results, ("pg_noop",), command, timeout=1200)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stderr[-8000:]}"
    found: Results = json.loads((results / "guest_guard_wake.json").read_text())
    assert "error" not in found, (found["error"], found["trace_error_log"], found["stderr"])
    return found


def test_the_guard_listens_to_the_ring_buffer_and_the_control_files(guest: Results) -> None:
    start = guest["start"]
    assert {"sys_exit_finit_module", "sys_exit_delete_module"} <= set(start["told_by"])
    assert "sys_exit_perf_event_open" in start["told_by"]
    assert "/sys/kernel/tracing/kprobe_events" in start["watched_files"]
    assert "/sys/kernel/debug/kprobes/enabled" in start["watched_files"]


@pytest.mark.parametrize("kind", sorted(WOKEN_BY))
def test_each_hook_is_reported_woken_by_the_kernel(guest: Results, kind: str) -> None:
    mine: list[dict[str, Any]] = [r for r in guest["reactions"] if r["kind"] == kind]
    assert len(mine) == 2, guest["reactions"]
    for reaction in mine:
        assert not reaction.get("missed"), reaction
        assert reaction["woken_by"] == WOKEN_BY[kind], reaction
        assert str(reaction["why"]).startswith("trigger:"), reaction


def test_the_guards_own_program_is_never_a_finding(guest: Results) -> None:
    own = set(guest["start"]["told_by_prog_ids"])
    assert len(own) == 2, own  # pg_guard_wake and pg_guard_bpfcmd
    findings = [e["finding"] for e in guest["lines"] if e.get("event") == "finding"]
    assert findings, "the guard reported nothing at all"
    assert not [f for f in findings if f.get("evidence", {}).get("prog_id") in own]


def test_the_guard_stopped_cleanly(guest: Results) -> None:
    assert guest["exit"] == 0, guest["stderr"]
