"""The first scan after boot in the lab guest, on both kernels, reports nothing of
patchguard's own making: the modules it loads for itself (msr; nfnetlink and nfnetlink_hook
through its netfilter socket) are loaded before any view of the modules is read, so no view
misses them (first_scan_checks.py runs in the guest)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.lab_guest import run_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", params=["stock", "newer"])
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    results = tmp_path_factory.mktemp(f"first-scan-{request.param}")
    command = ["python3", "/src/tests/lab/first_scan_checks.py", "/results"]
    kaslr = request.param == "newer"  # the newer kernel has no vmlinux: bzImage only
    run = run_lab(results, (), command, timeout=600, kernel=request.param, kaslr=kaslr)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stderr[-8000:]}"
    found = json.loads((results / "first_scan_checks.json").read_text())
    assert "errors" not in found, found["errors"]
    return found


def _above_info(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["severity"] != "info"]


def _names(finding: dict[str, Any], modules: set[str]) -> set[str]:
    said = json.dumps([finding["subject"], finding["summary"], finding["evidence"]])
    return {m for m in modules if m in said}


def test_the_first_scan_loads_msr_and_reports_nothing_of_its_own_making(guest: Any) -> None:
    loaded = set(guest["after"]) - set(guest["before"])
    assert "msr" in loaded, "the scan loads msr for the MSR view (unloaded first)"
    for step in ("first_scan", "second_scan"):
        report = guest[step]["report"]
        ours = [f for f in _above_info(report) if _names(f, loaded)]
        assert ours == [], (step, loaded, ours)
        hidden = [f for f in _above_info(report) if f["technique"] == "hidden-module"]
        assert hidden == [], (step, hidden)
