"""Run INSIDE the lab guest (by test_lab_tracepoint_probes.py through lab/run): tracepoint
probes read from kernel memory by `scan --surface tracing`, as one JSON document written to
<results>/tracepoint_probes_checks.json (argv[1], default /results).

Steps: kernel.kptr_restrict=1 (root then sees vmallocinfo's real addresses, so the stub's
allocation is named); a trace event switched on through tracefs (its probe against set_event)
and a BPF raw tracepoint (6.1 passes the program itself as the probe's data), with a scan;
pg_tp_probe (a probe of its own function on one tracepoint, a stub in memory of no module on
another, every read of set_event cut to nothing) and a scan with a trace event on; rmmod and a
scan; pg_tp_probe again with unlist=1 (off the module list, so its own probe runs in memory of
a hidden module) and a scan; last, the kernel log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the support package

from support import bpfprogs as bp

from patchguard.kernel import Kernel

steps = Steps(
    "tracepoint_probes_checks",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-tracepoint-probes"),
)
step, run, patchguard = steps.step, steps.run, steps.patchguard
EVENT = Path("/sys/kernel/tracing/events/sched/sched_kthread_stop/enable")
RAW_TP = "sched_process_hang"
OWNED_TP, STUB_TP = "sched_process_fork", "sched_process_exec"


def addresses() -> dict[str, int]:
    kernel = Kernel()
    try:
        found = {n: kernel.kallsyms.address_of(n) for n in ("module_alloc", "set_memory_x")}
    finally:
        kernel.close()
    missing = [n for n, a in found.items() if a is None]
    if missing:
        raise LookupError(f"not in kallsyms: {missing}")
    return {n: int(a or 0) for n, a in found.items()}


def with_event_and_raw_tracepoint() -> dict[str, Any]:
    EVENT.write_text("1\n")
    try:
        with bp.attach_raw_tracepoint(RAW_TP, "pg_t_rawtp") as prog:
            return {
                "prog_id": prog.prog_id,
                "set_event": Path("/sys/kernel/tracing/set_event").read_text(),
                "scan": patchguard("scan", "--json", "--surface", "tracing"),
            }
    finally:
        EVENT.write_text("0\n")


def insmod(*extra: str) -> dict[str, Any]:
    where = addresses()
    return steps.insmod(
        "pg_tp_probe",
        f"alloc={where['module_alloc']:#x}",
        f"set_x={where['set_memory_x']:#x}",
        f"owned_tp={OWNED_TP}",
        f"stub_tp={STUB_TP}",
        *extra,
    )


def fork_and_exec() -> dict[str, Any]:
    """Fires both tracepoints, so the probes are shown to run."""
    return run("/bin/true")


step("kptr_restrict", lambda: Path("/proc/sys/kernel/kptr_restrict").write_text("1\n"))
step("event_and_raw", with_event_and_raw_tracepoint)
step("insmod_tp_probe", lambda: insmod("hide_file=set_event"))
step("fire", fork_and_exec)
step("event_on", lambda: EVENT.write_text("1\n"))
step("set_event_filtered", lambda: Path("/sys/kernel/tracing/set_event").read_text())
step("scan_tp_probe", lambda: patchguard("scan", "--json", "--surface", "tracing"))
step("event_off", lambda: EVENT.write_text("0\n"))
step("tp_probe_params", lambda: module_params("pg_tp_probe"))
step("rmmod_tp_probe", lambda: run("rmmod", "pg_tp_probe"))
step("scan_after", lambda: patchguard("scan", "--json", "--surface", "tracing"))
step("insmod_unlisted", lambda: insmod("unlist=1"))
step("fire_unlisted", fork_and_exec)
step("unlisted_params", lambda: module_params("pg_tp_probe"))
step("proc_modules", lambda: Path("/proc/modules").read_text())
step("scan_unlisted", lambda: patchguard("scan", "--json", "--surface", "tracing"))
step("kernel_log", lambda: steps.kernel_log("tp_probe", "tracepoint"))
steps.finish()
