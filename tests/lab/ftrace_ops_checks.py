"""Run INSIDE the lab guest (by test_lab_ftrace_ops.py through lab/run): the ftrace ops list
and BPF trampolines read from kernel memory against the text views, as one JSON document
written to <results>/ftrace_ops_checks.json (argv[1], default /results).

Steps: an fentry program on __do_sys_getppid (the Debian kernel allows it): its ftrace site's
call target recognised as a BPF trampoline by its code, and the program it runs read from
memory, beside what bpf(2) and kallsyms say; `scan --surface tracing` with it (its direct ops
in memory, enabled_functions readable and agreeing); pg_ops_filter (an ftrace ops of its own
on two functions, enabled_functions emptied for every process) and `scan --surface tracing`
under it; rmmod and the scan again; pg_mod_hide (its symbols blanked in /proc/kallsyms, its
/sys/module entry dropped from listings) and `scan --surface modules`; rmmod; last,
pg_sysfs_removed (its kobject removed from sysfs, never unloaded) and the scan again."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the support package

from support import bpfprogs as bp

from patchguard.kernel import Kernel
from patchguard.kernel.bpf.tramp_memory import TrampolineMemory, offsets
from patchguard.surfaces import bpf_trampolines
from patchguard.x86 import bpf_trampoline, insn

steps = Steps(
    "ftrace_ops_checks",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-ftrace-ops"),
)
step, run, patchguard, out = steps.step, steps.run, steps.patchguard, steps.out
FENTRY = "__do_sys_getppid"


def enabled_lines() -> int:
    return len(Path("/sys/kernel/tracing/enabled_functions").read_text().splitlines())


def site_target(kernel: Kernel, function: str) -> int:
    """Where the CALL at `function`'s ftrace site (its entry, or after ENDBR64) goes."""
    start = kernel.kallsyms.address_of(function)
    if start is None:
        raise LookupError(f"{function} is not in kallsyms")
    code = kernel.memory().read(start, 16)
    at = 4 if code[:4] in insn.ENDBRS else 0
    hop = insn.branch(code[at:], start + at)
    if hop is None or hop.kind != "call":
        raise LookupError(f"{function}'s ftrace site holds {code[at : at + 5].hex()}, no call")
    return hop.dest


def trampoline(prog_id: int) -> dict[str, Any]:
    """The fentry program's trampoline as the recogniser and memory see it."""
    kernel = Kernel()
    try:
        target = site_target(kernel, FENTRY)
        memory = kernel.memory()
        helpers = bpf_trampoline.helper_addresses(
            bpf_trampolines.trampoline_helpers(kernel.kallsyms)
        )
        shape = bpf_trampoline.recognise(memory.read(target, 1024), target, helpers)
        named = [s.name for s in kernel.kallsyms.at(target) if s.module == "bpf"]
        found: dict[str, Any] = {"target": target, "kallsyms": named, "expected_id": prog_id}
        if shape is None:
            return {**found, "recognised": False}
        structs = TrampolineMemory(memory, offsets(kernel.vmlinux_btf))
        progs = [structs.program(p.prog) for p in shape.programs]
        return {
            **found,
            "recognised": True,
            "after_original": [p.after_original for p in shape.programs],
            "ids": [p.prog_id for p in progs],
            "names": [p.name for p in progs],
            "attach_to": [p.attach_to for p in progs],
            "listed": [p.ksym.listed if p.ksym else None for p in progs],
        }
    finally:
        kernel.close()


def with_fentry() -> dict[str, Any]:
    prog = bp.attach_fentry(FENTRY, "pg_t_fentry")
    with prog:
        return {
            "prog_id": prog.prog_id,
            "enabled_lines": enabled_lines(),
            "trampoline": trampoline(prog.prog_id),
            "scan": patchguard("scan", "--json", "--surface", "tracing"),
            "scan_text": patchguard("scan", "--json", "--surface", "kernel_text"),
        }


def filldir64() -> int:
    kernel = Kernel()
    try:
        address = kernel.kallsyms.address_of("filldir64")
    finally:
        kernel.close()
    if address is None:
        raise LookupError("filldir64 is not in kallsyms")
    return address


def module_views(name: str) -> dict[str, Any]:
    """What the text views show of module `name`, as this process reads them."""
    kallsyms = Path("/proc/kallsyms").read_text()
    return {
        "sys_module_lists": name in os.listdir("/sys/module"),
        "sys_module_opens": Path("/sys/module", name).is_dir(),
        "kallsyms_names": [
            line.split()[2] for line in kallsyms.splitlines() if line.endswith(f"\t[{name}]")
        ],
        "proc_modules": any(line.split()[0] == name for line in Path("/proc/modules").open()),
    }


step("enabled_before", enabled_lines)
step("fentry", with_fentry)
step("insmod_ops_filter", lambda: steps.insmod("pg_ops_filter"))
step("enabled_filtered", enabled_lines)
step("scan_filtered", lambda: patchguard("scan", "--json", "--surface", "tracing"))
step("ops_filter_params", lambda: module_params("pg_ops_filter"))
step("rmmod_ops_filter", lambda: run("rmmod", "pg_ops_filter"))
step("enabled_after", enabled_lines)
step("scan_after", lambda: patchguard("scan", "--json", "--surface", "tracing"))
step("insmod_mod_hide", lambda: steps.insmod("pg_mod_hide", f"filldir={filldir64():#x}"))
step("mod_hide_views", lambda: module_views("pg_mod_hide"))
step("scan_mod_hide", lambda: patchguard("scan", "--json", "--surface", "modules"))
step("mod_hide_params", lambda: module_params("pg_mod_hide"))
step("rmmod_mod_hide", lambda: run("rmmod", "pg_mod_hide"))
step("insmod_sysfs_removed", lambda: steps.insmod("pg_sysfs_removed"))
step("sysfs_removed_views", lambda: module_views("pg_sysfs_removed"))
step("scan_sysfs_removed", lambda: patchguard("scan", "--json", "--surface", "modules"))
step("kernel_log", lambda: steps.kernel_log("ops_filter", "bpf", "mod_hide", "sysfs_removed"))
steps.finish()
