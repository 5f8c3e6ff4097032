"""Run INSIDE the lab guest on the newer kernel (6.12, by test_lab_direct_call_newer.py through
lab/run --kernel newer): a direct ops whose own direct_call (6.6+) is rewritten behind ftrace's
direct_functions hash, as one JSON document written to <results>/direct_call_newer_checks.json
(argv[1], default /results).

Two loads of pg_direct_call on vfs_read, each with a plain ftrace_ops sharing the site (so
calls go through call_direct_funcs, which follows the ops' direct_call): first with direct_call
left as registered (shared=1), then with it pointed at the module's second stub (shared=1
swap=1). Each time: a read through vfs_read and which stub its calls reached (each stub
counts them), enabled_functions, the module's symbols,
`scan --surface tracing`, rmmod; then a scan after. Last, in the same boot, pg_nf_hook
hide=1 (off the module list and out of sysfs, its hook left registered) and `scan --surface
modules --surface netfilter`: on 6.12 a module holds several loader areas, and vmallocinfo
hashes their addresses here. Then the kernel log."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guest_steps import Steps, kernel_address, module_params, pg_symbols

steps = Steps(
    "direct_call_newer_checks",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-direct-call-newer"),
)
step, run, patchguard = steps.step, steps.run, steps.patchguard


def loaded(name: str, *params: str) -> None:
    """One load of the module with `params`, everything measured while it is in, and rmmod."""
    step(
        f"insmod_{name}",
        lambda: steps.insmod("pg_direct_call", f"addr={kernel_address('vfs_read'):#x}", *params),
    )
    step(f"calls_{name}", lambda: calls_of(lambda: run("cat", "/proc/version")))
    step(f"enabled_{name}", lambda: Path("/sys/kernel/tracing/enabled_functions").read_text())
    step(f"symbols_{name}", pg_symbols)
    step(f"scan_{name}", scan)
    step(f"rmmod_{name}", lambda: run("rmmod", "pg_direct_call"))


def calls_of(read: Callable[[], object]) -> dict[str, int]:
    """How many more calls each stub took across `read` (reads through vfs_read)."""
    before = stub_calls()
    read()
    after = stub_calls()
    return {stub: after[stub] - before[stub] for stub in after}


def stub_calls() -> dict[str, int]:
    params = module_params("pg_direct_call")
    return {p: int(params[p]) for p in ("stub_calls", "stub2_calls")}


def scan() -> dict[str, Any]:
    return patchguard("scan", "--json", "--surface", "tracing")


loaded("shared", "shared=1")
loaded("swapped", "shared=1", "swap=1")
step("scan_after", scan)
step("insmod_nf_hidden", lambda: steps.insmod("pg_nf_hook", "hide=1"))
step(
    "scan_nf_hidden",
    lambda: patchguard("scan", "--json", "--surface", "modules", "--surface", "netfilter"),
)
step("kernel_log", lambda: steps.kernel_log("direct", "ftrace"))
steps.finish()
