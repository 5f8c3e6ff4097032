"""Run INSIDE the lab guest (by test_lab_direct_call.py through lab/run): a direct ftrace call
that is no BPF trampoline, under the exceptions the project ships for bpftrace's fentry probes,
as one JSON document written to <results>/direct_call_checks.json (argv[1], default /results).

Steps: a baseline; two ledgers, one approving the shipped bpftrace-fentry.toml, one approving
the same manifest with the `[[ftrace]] function = "vfs_read" owner = "call_direct_funcs"` it
used to carry; pg_direct_call on vfs_read (its ftrace site then calls a stub of the module
through ftrace's direct-call ops, as a BPF trampoline is called); a read through vfs_read;
`scan --surface tracing` under each ledger and `check`; rmmod and a scan; the kernel log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, kernel_address

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the support package

from support.corpus import MANIFESTS, ledger

steps = Steps(
    "direct_call_checks",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-direct-call"),
)
step, run, patchguard = steps.step, steps.run, steps.patchguard
WORK = Path("/tmp/patchguard-direct-call")
OLD_STYLE = '\n[[ftrace]]\nfunction = "vfs_read"\nowner = "call_direct_funcs"\n'
VENDOR = "bpftrace packagers"


def ledgers() -> dict[str, str]:
    shipped = MANIFESTS / "bpftrace-fentry.toml"
    old = WORK / "bpftrace-fentry-old.toml"
    old.write_text(shipped.read_text() + OLD_STYLE)
    return {
        "shipped": str(ledger(WORK / "shipped", shipped, VENDOR)),
        "old_style": str(ledger(WORK / "old", old, VENDOR)),
    }


def scan_under(path: str) -> dict[str, Any]:
    steps.env["PATCHGUARD_LEDGER"] = path
    return patchguard("scan", "--json", "--surface", "tracing")


step("baseline", lambda: patchguard("baseline", "create"))
paths = step("ledgers", ledgers)
step("insmod", lambda: steps.insmod("pg_direct_call", f"addr={kernel_address('vfs_read'):#x}"))
step("read", lambda: run("cat", "/proc/version"))
step("enabled_functions", lambda: Path("/sys/kernel/tracing/enabled_functions").read_text())
step("pg_symbols", lambda: run("grep", "pg_direct", "/proc/kallsyms")["stdout"])
step("scan_shipped", lambda: scan_under(paths["shipped"]))
step("scan_old_style", lambda: scan_under(paths["old_style"]))
step("check", lambda: patchguard("check", "--json"))
step("rmmod", lambda: run("rmmod", "pg_direct_call"))
step("scan_after", lambda: scan_under(paths["shipped"]))
step("kernel_log", lambda: steps.kernel_log("direct", "ftrace"))
steps.finish()
