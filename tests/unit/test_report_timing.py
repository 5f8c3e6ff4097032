"""The report's two times: the collection (`seconds`) and the process's whole wall time
(`process_seconds`, from its start in /proc/self/stat), which the terminal output prints."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

from rich.console import Console

from patchguard.kernel import Kernel
from patchguard.report import process_seconds, render, to_json
from patchguard.scan import report_for

TICKS = os.sysconf("SC_CLK_TCK")
# /proc/PID/stat of a process whose name holds ") " (comm is free text): field 22 is starttime
STAT = "4242 (evil) name) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + f" {5 * TICKS} 0"


def test_process_seconds_from_the_start_time_in_stat() -> None:
    assert process_seconds(STAT, now=12.5) == 7.5
    assert process_seconds("garbage", now=1.0) is None
    assert process_seconds(STAT, now=1.0) == 0.0  # never negative


def test_this_process_has_run_at_least_as_long_as_it_has_measured() -> None:
    t0 = time.perf_counter()
    time.sleep(0.05)
    waited = process_seconds()
    assert waited is not None and waited >= time.perf_counter() - t0 - 1 / TICKS


def test_json_carries_both_and_the_terminal_prints_the_process_time() -> None:
    report = report_for(Kernel("/nonexistent"), [], time.perf_counter() - 0.25, command="scan")
    doc = to_json(report)
    assert doc["seconds"] >= 0.25 and doc["process_seconds"] >= doc["seconds"]
    out = io.StringIO()
    render(report, Console(file=out, width=200))
    first = out.getvalue().splitlines()[0]
    assert "s (collection 0.25s)" in first or "s (collection 0.26s)" in first, first


def test_a_real_scan_document_has_process_seconds_above_seconds() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "scan", "--json", "--surface", "posture"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    doc = json.loads(done.stdout)
    assert doc["process_seconds"] > doc["seconds"] > 0, done.stderr
