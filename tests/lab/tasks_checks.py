"""Run INSIDE the lab guest (by test_lab_hidden_task.py through lab/run): a process hidden from
every text view, and lines dropped from every process's writes, with what patchguard says of
them, as one JSON document written to <results>/tasks_checks.json (argv[1], default /results).

Steps: start a victim (`sleep`); `scan --json --surface processes`; pg_hide_task hides it
from the /proc listings, stat, kill(2) and the task iterator's seq output; what this process
sees of it then; the scan again (memory has it: the finding names the views that lie); rmmod.
pg_hide_task again with only_iterator=1 (the iterator's seq output alone lies) and the scan;
rmmod. pg_hide_task with unlink=1 (DKOM: off the task list and out of the pid table), with a
/proc/<pid> entry of the victim held open first, the one view that still shows it; the scan;
rmmod (the module links it back). pg_hide_pid (a getdents64 filter only) and the scan: memory
still has the task, so it stays a view that lies, never an unlinked task; rmmod.
pg_hide_task with invent=1 makes kill(2) answer for the pid of a reaped child, which no task
has: a view that invents a process; the scan; rmmod.
Then a host key; pg_write_filter drops every line containing "kernel_release" from every
write; `scan --json --surface processes` written to a file through it; `verify-report` on it
(it must say altered) and, after rmmod, on a report written without the filter (intact)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params

from patchguard.signing import HostKey

WORK = Path("/tmp/patchguard-tasks")
steps = Steps("tasks_checks", Path(sys.argv[1] if len(sys.argv) > 1 else "/results"), WORK)
step, run, patchguard, out = steps.step, steps.run, steps.patchguard, steps.out
WORD = "kernel_release"


def views_of(pid: int) -> dict[str, bool]:
    """What this process sees of the pid through each text view."""
    seen = {"listed": str(pid) in os.listdir("/proc"), "stat": Path(f"/proc/{pid}").exists()}
    try:
        os.kill(pid, 0)
        seen["kill"] = True
    except ProcessLookupError:
        seen["kill"] = False
    return seen


def reaped_pid() -> int:
    """The pid of a child that has been reaped: no task has it (pids are handed out upward)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def sealed(name: str) -> dict[str, Any]:
    """A processes scan written to a file by patchguard itself, and verify-report on it."""
    report = WORK / f"{name}.json"
    with report.open("w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "patchguard.cli", "scan", "--json", "--surface", "processes"],
            stdout=f,
            env=steps.env,
            check=False,
        )
    text = report.read_text()
    verify = run(sys.executable, "-m", "patchguard.cli", "verify-report", str(report))
    return {"scan_rc": done.returncode, "word_lines": text.count(WORD), "verify": verify}


victim = subprocess.Popen(["sleep", "600"])
out["victim"] = victim.pid
out["guest_pid"] = os.getpid()  # the victim's parent: its children list holds it
try:
    step("scan_before", lambda: patchguard("scan", "--json", "--surface", "processes"))
    step("insmod_hide", lambda: steps.insmod("pg_hide_task", f"pid={victim.pid}"))
    step("views_hidden", lambda: views_of(victim.pid))
    step("scan_hidden", lambda: patchguard("scan", "--json", "--surface", "processes"))
    step("hide_params", lambda: module_params("pg_hide_task"))
    step("rmmod_hide", lambda: run("rmmod", "pg_hide_task"))
    step("views_after", lambda: views_of(victim.pid))
    step(
        "insmod_iter", lambda: steps.insmod("pg_hide_task", f"pid={victim.pid}", "only_iterator=1")
    )
    step("scan_iter", lambda: patchguard("scan", "--json", "--surface", "processes"))
    step("iter_params", lambda: module_params("pg_hide_task"))
    step("rmmod_iter", lambda: run("rmmod", "pg_hide_task"))
    # the dentry a stat caches holds the task's struct pid: it answers after the unlinking
    held = os.open(f"/proc/{victim.pid}", os.O_PATH | os.O_DIRECTORY)
    step("insmod_unlink", lambda: steps.insmod("pg_hide_task", f"pid={victim.pid}", "unlink=1"))
    step("views_unlinked", lambda: views_of(victim.pid))
    step("scan_unlinked", lambda: patchguard("scan", "--json", "--surface", "processes"))
    step("rmmod_unlink", lambda: run("rmmod", "pg_hide_task"))
    os.close(held)
    step("views_relinked", lambda: views_of(victim.pid))
    step("insmod_filter_pid", lambda: steps.insmod("pg_hide_pid", f"pid={victim.pid}"))
    step("scan_filter_pid", lambda: patchguard("scan", "--json", "--surface", "processes"))
    step("rmmod_filter_pid", lambda: run("rmmod", "pg_hide_pid"))
    out["invented"] = invented = reaped_pid()
    step("insmod_invent", lambda: steps.insmod("pg_hide_task", f"pid={invented}", "invent=1"))
    step("scan_invented", lambda: patchguard("scan", "--json", "--surface", "processes"))
    step("invent_params", lambda: module_params("pg_hide_task"))
    step("rmmod_invent", lambda: run("rmmod", "pg_hide_task"))
finally:
    victim.kill()  # our own child, by its pid
    victim.wait()
step("host_key", lambda: str(HostKey.load_or_create(WORK / "host.key").path))
step("insmod_filter", lambda: steps.insmod("pg_write_filter", f"word={WORD}"))
step("sealed_filtered", lambda: sealed("filtered"))
step("filter_params", lambda: module_params("pg_write_filter"))
step("rmmod_filter", lambda: run("rmmod", "pg_write_filter"))
step("sealed_intact", lambda: sealed("intact"))
with contextlib.suppress(Exception):
    step("kernel_log", lambda: steps.kernel_log("hide_task", "write_filter", "hide_pid"))
steps.finish()
