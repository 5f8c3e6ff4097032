"""lab/run's wedge detection, on console lines the lab printed when its guest wedged in CI
(2026-12-06: both vCPUs in soft lockup while bpftrace attached an fentry probe)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

WEDGED = """\
[  747.786182] rcu: rcu_preempt kthread starved for 99785 jiffies! g48269 f0x2 RCU_GP_WAIT_FQS(5)
[  760.659196] watchdog: BUG: soft lockup - CPU#1 stuck for 388s! [python3:137]
[  772.635867] watchdog: BUG: soft lockup - CPU#0 stuck for 395s! [bpftrace:221]
"""


def lab_run() -> Any:
    loader = importlib.machinery.SourceFileLoader("lab_run", str(REPO / "lab" / "run"))
    spec = importlib.util.spec_from_loader("lab_run", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_cpu_stuck_long_enough_is_a_wedge_with_the_first_report() -> None:
    report = lab_run().first_lockup(WEDGED)
    assert report is not None
    first, second = report.splitlines()[:2]
    assert first.endswith("soft lockup - CPU#1 stuck for 388s! [python3:137]")
    assert second.endswith("soft lockup - CPU#0 stuck for 395s! [bpftrace:221]")


def test_a_short_stall_under_emulation_is_not_a_wedge() -> None:
    run = lab_run()
    short = "[  40.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [python3:90]\n"
    assert run.first_lockup(short) is None
    assert run.first_lockup("[ 1.0] Run /init as init process\n") is None
    # a long stall later makes the first report the one shown, with what followed it
    later = short + "[ 200.0] watchdog: BUG: soft lockup - CPU#0 stuck for 150s! [python3:90]\n"
    assert run.first_lockup(later) == later.rstrip("\n")
