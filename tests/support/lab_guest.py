"""Host side of the lab's rootkit tests: build the test modules, boot the guest once with one
guest_*.py script, and read back its JSON document; and the ways the tests pick
findings out of the patchguard reports in it."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PATCHGUARD_LAB_CACHE", "/var/cache/patchguard-lab"))
WEDGED_EXIT = 123  # lab/run: a guest CPU stuck in the kernel; the guest was killed
TIMING = re.compile(r"lab/run: boot ([\d.]+) s, total ([\d.]+) s")
# (test, boot to the command's first line, boot to poweroff) of every boot in this session:
# tests/conftest.py prints them at the end of the run (the CI log).
BOOTS: list[tuple[str, float, float]] = []
Results = dict[str, Any]


def module_builder() -> Any:
    """tests/lab/modules/build.py, loaded as a module (it is also a script)."""
    spec = importlib.util.spec_from_file_location(
        "patchguard_lab_modules_build", REPO / "tests" / "lab" / "modules" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_lab(
    results: Path,
    modules: Sequence[str],
    command: Sequence[str],
    timeout: float = 900,
    kernel: str = "stock",
    init: str = "sh",
    kaslr: bool = True,
    root: str = "bookworm",
) -> subprocess.CompletedProcess[str]:
    """Copy `modules` (.ko, built for the kernel booted) into `results`, the guest's /results,
    and run `command` in one boot of `kernel` ("stock" 6.1 or "newer", see lab/run --kernel)
    with the whole kernel log on stderr; `init` "systemd" boots systemd as PID 1 (lab/run
    --init), from `root` "bookworm" or "trixie" (lab/run --root: trixie's systemd has its BPF
    framework). kaslr=False boots the stock kernel's vmlinux through PVH
    (lab/run --no-kaslr: seconds faster a boot under TCG), for the tests whose subject is not
    where the kernel sits; the boot facts, the live suite and the syscall and inline hooks keep
    KASLR on, so the suite still proves itself with it."""
    if not (CACHE / "current" / "lab.json").is_file():
        pytest.skip("lab not built: run lab/build")
    if modules:
        builder = module_builder()
        try:
            built = builder.build(kernel)
        except builder.BuildError as exc:
            pytest.fail(f"the test modules did not build: {exc}")
        for name in modules:
            shutil.copy2(built / f"{name}.ko", results / f"{name}.ko")
    lab = [sys.executable, str(REPO / "lab" / "run"), "--timeout", str(timeout), "--console"]
    lab += ["--kernel", kernel, "--init", init, "--root", root]
    lab += [] if kaslr else ["--no-kaslr"]
    lab += ["--results", str(results), "--", *command]
    for attempt in (1, 2):
        run = boot(lab, timeout + 60)
        print(run.stdout[-4000:], run.stderr[-8000:], sep="\n", file=sys.stderr)
        if timing := TIMING.search(run.stderr):
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            test += f" ({kernel}{'' if kaslr else ', no KASLR'})"
            BOOTS.append((test, float(timing.group(1)), float(timing.group(2))))
        if run.returncode != WEDGED_EXIT or attempt == 2:
            break
        # Seen once in CI: both vCPUs of the emulated guest stuck in the kernel while bpftrace
        # attached an fentry program; never again in many runs. A wedge twice in a row fails.
        warnings.warn(
            f"the lab guest wedged; booting it again:\n{run.stderr[-3000:]}", stacklevel=1
        )
    return run


def boot(lab: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """lab/run in a session of its own, stopped with its QEMU if the test is: killing lab/run
    alone (what subprocess.run does on a timeout or Ctrl-C) left the guest emulating on,
    taking the CPU from every boot after it."""
    with subprocess.Popen(
        lab, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):  # the whole group already ended
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(lab, proc.returncode, stdout, stderr)


def lab_build() -> dict[str, Any]:
    """The current lab build's lab.json (skips the test if the lab is not built)."""
    if not (CACHE / "current" / "lab.json").is_file():
        pytest.skip("lab not built: run lab/build")
    found: dict[str, Any] = json.loads((CACHE / "current" / "lab.json").read_text())
    return found


def run_script(
    results: Path,
    script: str,
    modules: Sequence[str],
    timeout: float = 900,
    kaslr: bool = True,
    kernel: str = "stock",
) -> Results:
    """Run tests/lab/`script` in one guest boot of `kernel` and return the document it wrote
    to <results>/<script stem>.json."""
    command = ["python3", f"/src/tests/lab/{script}", "/results"]
    run = run_lab(results, modules, command, timeout, kernel=kernel, kaslr=kaslr)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stderr[-8000:]}"
    found: Results = json.loads((results / f"{Path(script).stem}.json").read_text())
    assert "errors" not in found, found["errors"]
    return found


def report(guest: Results, step: str) -> dict[str, Any]:
    done = guest[step]
    assert "report" in done, f"{step}: no JSON report (exit {done['rc']}): {done['stderr']}"
    found: dict[str, Any] = done["report"]
    return found


def findings(guest: Results, step: str, **match: str) -> list[dict[str, Any]]:
    return [
        f
        for f in report(guest, step)["findings"]
        if all(f.get(key) == value for key, value in match.items())
    ]


def one(guest: Results, step: str, **match: str) -> dict[str, Any]:
    found = findings(guest, step, **match)
    assert len(found) == 1, (match, report(guest, step)["findings"])
    return found[0]


def records(guest: Results, step: str, surface: str, kind: str) -> list[dict[str, Any]]:
    """The records of one kind that one surface reported in a step's scan."""
    for state in report(guest, step)["surfaces"]:
        if state["name"] == surface:
            return [r for r in state["records"] if r.get("kind") == kind]
    raise AssertionError(f"{step}: no surface {surface} in the report")
