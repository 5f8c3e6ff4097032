"""Run INSIDE the lab guest (by test_lab_khook.py and test_lab_taint_cleared.py through
lab/run): rootkits that lie to the views, and what patchguard says of them, as one JSON
document written to <results>/truth_checks.json (argv[1], default /results).

Steps: find the addresses the modules need in kallsyms; kernel.kptr_restrict=1 (so that
root sees vmallocinfo's real addresses and the stub's allocation can be named); baseline;
pg_khook (an entry JMP into a stub of no module); reads through it; `check --json` and
`scan --json` (kernel_text: the baseline-free ftrace-site check); rmmod and `check` again;
pg_taint_clear (tainted_mask set to 0 after two unsigned out-of-tree modules loaded); `scan
--json --surface posture` to a file, `verify-report` on it and on a copy with every line
containing "taint" dropped (what one rootkit did to processes' writes); pg_kallsyms_filter cutting
/proc/kallsyms short for processes named `cat`, then for every process, with `scan --json
--surface kernel_text` under each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params, pg_symbols

from patchguard.kernel import Kernel

steps = Steps(
    "truth_checks",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-truth"),
)
step, run, patchguard, out = steps.step, steps.run, steps.patchguard, steps.out
TARGET = "version_proc_show"
NEEDED = (TARGET, "module_alloc", "set_memory_x", "tainted_mask")
READS = 3
WORK = Path("/tmp/patchguard-truth")


def addresses() -> dict[str, int]:
    kernel = Kernel()
    try:
        found = {name: kernel.kallsyms.address_of(name) for name in NEEDED}
    finally:
        kernel.close()
    missing = [name for name, address in found.items() if address is None]
    if missing:
        raise LookupError(f"not in kallsyms: {', '.join(missing)}")
    return {name: address for name, address in found.items() if address is not None}


def insmod(module: str, **params: int) -> dict[str, Any]:
    return steps.insmod(module, *(f"{name}={value:#x}" for name, value in params.items()))


def taint() -> int:
    return int(Path("/proc/sys/kernel/tainted").read_text())


def sealed_reports() -> dict[str, Any]:
    """A report written to a file, verified as is and with the "taint" lines dropped."""
    report, dropped = WORK / "scan.json", WORK / "scan-filtered.json"
    with report.open("w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "patchguard.cli", "scan", "--json", "--surface", "posture"],
            stdout=f,
            env=steps.env,
            check=False,
        )
    lines = report.read_text().splitlines(keepends=True)
    dropped.write_text("".join(line for line in lines if "taint" not in line))
    verify = [sys.executable, "-m", "patchguard.cli", "verify-report"]
    return {
        "scan_rc": done.returncode,
        "intact": run(*verify, str(report)),
        "filtered": run(*verify, str(dropped)),
    }


def kallsyms_lines() -> dict[str, int]:
    """Lines of /proc/kallsyms as `cat` reads it and as this (python3) process reads it."""
    by_cat = subprocess.run(["cat", "/proc/kallsyms"], capture_output=True, check=False).stdout
    return {"cat": by_cat.count(b"\n"), "python": Path("/proc/kallsyms").read_bytes().count(b"\n")}


where = step("addresses", addresses) or {}
out["addresses"] = {name: hex(value) for name, value in where.items()}
step("kptr_restrict", lambda: Path("/proc/sys/kernel/kptr_restrict").write_text("1\n"))
step("version_before", lambda: Path("/proc/version").read_text())
step("baseline", lambda: patchguard("baseline", "create"))
step("check_before", lambda: patchguard("check", "--json"))
if where:
    step(
        "insmod_khook",
        lambda: insmod(
            "pg_khook",
            target=where[TARGET],
            alloc=where["module_alloc"],
            set_x=where["set_memory_x"],
        ),
    )
step("khook_reads", lambda: [Path("/proc/version").read_text() for _ in range(READS)])
step("khook_params", lambda: module_params("pg_khook"))
step("khook_symbols", pg_symbols)
step("vmallocinfo", lambda: Path("/proc/vmallocinfo").read_text()[-200000:])
step("check_khook", lambda: patchguard("check", "--json"))
step("scan_khook", lambda: patchguard("scan", "--json", "--surface", "kernel_text"))
step("rmmod_khook", lambda: run("rmmod", "pg_khook"))
step("check_after_khook", lambda: patchguard("check", "--json"))
step("taint_before_clear", taint)
if where:
    step("insmod_taint_clear", lambda: insmod("pg_taint_clear", mask=where["tainted_mask"]))
step("taint_after_clear", taint)
step("taint_clear_params", lambda: module_params("pg_taint_clear"))
step("scan_taint", lambda: patchguard("scan", "--json", "--surface", "posture"))
step("sealed", sealed_reports)
step("insmod_filter_cat", lambda: steps.insmod("pg_kallsyms_filter", "comm=cat"))
step("kallsyms_lines_cat", kallsyms_lines)
step("scan_filter_cat", lambda: patchguard("scan", "--json", "--surface", "kernel_text"))
step("rmmod_filter_cat", lambda: run("rmmod", "pg_kallsyms_filter"))
step("insmod_filter_all", lambda: steps.insmod("pg_kallsyms_filter", "comm=*"))
step("kallsyms_lines_all", kallsyms_lines)
step("scan_filter_all", lambda: patchguard("scan", "--json", "--surface", "kernel_text"))
step("filter_params", lambda: module_params("pg_kallsyms_filter"))
step("rmmod_filter_all", lambda: run("rmmod", "pg_kallsyms_filter"))
step("kernel_log", lambda: steps.kernel_log("khook", "taint", "kallsyms"))
steps.finish()
