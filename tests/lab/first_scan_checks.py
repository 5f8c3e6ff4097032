"""Run INSIDE the lab guest (by test_lab_first_scan.py through lab/run): the first scan after
boot, with the modules patchguard loads for itself (msr for the MSR view; nfnetlink, and
nfnetlink_hook where it is a module, for the netfilter hook dump) unloaded first where they
can be. Writes <results>/first_scan_checks.json (argv[1], default /results): the modules
before and after, and the scan's report."""

from __future__ import annotations

import sys
from pathlib import Path

from guest_steps import Steps

OWN = ("msr", "nfnetlink_hook", "nfnetlink")  # in unload order: nfnetlink_hook uses nfnetlink
steps = Steps(
    "first_scan_checks",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-first-scan"),
)


def modules() -> list[str]:
    return sorted(line.split()[0] for line in Path("/proc/modules").read_text().splitlines())


steps.step("booted_with", modules)
steps.step("unloaded", lambda: {m: steps.run("rmmod", m)["rc"] for m in OWN if m in modules()})
steps.step("before", modules)
steps.step("first_scan", lambda: steps.patchguard("scan", "--json"))
steps.step("after", modules)
steps.step("second_scan", lambda: steps.patchguard("scan", "--json"))
steps.finish()
