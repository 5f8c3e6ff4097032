"""Run INSIDE the lab guest (by test_lab_code_patching.py through lab/run): load the project's test
rootkits and record what patchguard says about them, as one JSON document written to
<results>/guest_code_patching.json (argv[1], default /results, where the host put the .ko
files).

Steps: find the addresses the modules need (kallsyms, and the `jmp __x64_sys_kill` inside
x64_sys_call from patchguard's own dispatch walker); `patchguard baseline create`; `check`
(must be clean); insmod both modules; make the hooks run (kill, getdents64, /proc/version);
`check --json`, `scan --json --surface syscalls --surface posture`; rmmod; `check` again;
then the inline hook over a function of ext4 (module text), `check`, rmmod, `check`.
Each step is measured, not asserted, so the host test can say which one failed; a step that
raises is recorded as that step's error and the rest still run (rmmod always does)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params

from patchguard.kernel import Kernel
from patchguard.x86.dispatch import KallsymsNames, dispatch_entries

steps = Steps(
    "guest_code_patching",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-rootkits"),
)
step, run, patchguard = steps.step, steps.run, steps.patchguard
NR_KILL = 62
MODULE_SYMBOLS = ("pg_x64_kill", "pg_table_kill", "pg_table_getdents64", "pg_inline_show")
INLINE_TARGET = "version_proc_show"  # /proc/version: rarely read, and only by the test
# A module's function for the same hook: ext4's show function of /proc/fs/ext4/<disk>/options
# (the guest's root file system is ext4 on vda), so module text is checked like core text.
MODULE_TARGET, MODULE_FILE = ("ext4_seq_options_show", "ext4"), Path("/proc/fs/ext4/vda/options")
KILLS, READS = 5, 3
out = steps.out


def addresses() -> dict[str, int]:
    """What the modules are told: sys_call_table, __x64_sys_kill, the dispatch jump of syscall
    62 in x64_sys_call (as `patchguard.x86.dispatch.dispatch_entries` finds it) and the
    function to hook inline."""
    kernel = Kernel()
    try:
        syms, memory = kernel.kallsyms, kernel.memory()
        found = {
            name: syms.address_of(name)
            for name in ("sys_call_table", "__x64_sys_kill", "x64_sys_call", INLINE_TARGET)
        }
        missing = [name for name, address in found.items() if address is None]
        if missing:
            raise LookupError(f"not in kallsyms: {', '.join(missing)}")
        start = found["x64_sys_call"] or 0
        end = syms.next_address(start)
        if end is None:
            raise LookupError("no symbol after x64_sys_call: its end is unknown")
        code = memory.read(start, end - start)
        jumps = [
            e
            for e in dispatch_entries("x64_sys_call", code, start, KallsymsNames(syms))
            if e.nr == NR_KILL
        ]
        if len(jumps) != 1 or jumps[0].size != 5 or jumps[0].target_name != "__x64_sys_kill":
            raise LookupError(f"no single 5-byte jmp for syscall 62 in x64_sys_call: {jumps}")
        result = {name: address for name, address in found.items() if address is not None}
        result["x64_kill_jmp"] = jumps[0].insn
        in_module = syms.address_of(*MODULE_TARGET)
        if in_module is None:
            raise LookupError(f"not in kallsyms: {MODULE_TARGET}")
        result[MODULE_TARGET[0]] = in_module
        return result
    finally:
        kernel.close()


def insmod(module: str, **params: int) -> dict[str, Any]:
    return steps.insmod(module, *(f"{name}={value:#x}" for name, value in params.items()))


def module_symbols() -> dict[str, str]:
    """Where the hooks are, and in which module, as /proc/kallsyms says."""
    found: dict[str, str] = {}
    for line in Path("/proc/kallsyms").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in MODULE_SYMBOLS:
            found[parts[2]] = f"0x{parts[0]} {parts[3]}"
    return found


def trigger() -> dict[str, Any]:
    """Make the hooks run: kill(2) through x64_sys_call, getdents64 (a /proc listing) and
    reads of /proc/version through the inline hook."""
    for _ in range(KILLS):
        os.kill(os.getpid(), 0)
    listed = len(os.listdir("/proc"))
    versions = [Path("/proc/version").read_text() for _ in range(READS)]
    return {"kills": KILLS, "proc_entries": listed, "reads": READS, "version": versions}


def taint() -> int:
    return int(Path("/proc/sys/kernel/tainted").read_text())


where = step("addresses", addresses) or {}
out["addresses"] = {name: hex(value) for name, value in where.items()}
step("taint_before", taint)
step("version_before", lambda: Path("/proc/version").read_text())
step("baseline", lambda: patchguard("baseline", "create"))
step("check_before", lambda: patchguard("check", "--json"))
if where:
    step(
        "insmod_syscall_hook",
        lambda: insmod(
            "pg_syscall_hook",
            table=where["sys_call_table"],
            x64_kill_jmp=where["x64_kill_jmp"],
            sys_kill=where["__x64_sys_kill"],
        ),
    )
    step("insmod_inline_hook", lambda: insmod("pg_inline_hook", target=where[INLINE_TARGET]))
step("module_symbols", module_symbols)
step("trigger", trigger)
step("syscall_hook_params", lambda: module_params("pg_syscall_hook"))
step("inline_hook_params", lambda: module_params("pg_inline_hook"))
step("taint_loaded", taint)
step("check_loaded", lambda: patchguard("check", "--json"))
step(
    "scan_loaded",
    lambda: patchguard("scan", "--json", "--surface", "syscalls", "--surface", "posture"),
)
step("rmmod", lambda: [run("rmmod", m) for m in ("pg_inline_hook", "pg_syscall_hook")])
step("trigger_after", trigger)
step("check_after", lambda: patchguard("check", "--json"))
# the same inline hook over a function in ext4's text
if where:
    step("insmod_module_hook", lambda: insmod("pg_inline_hook", target=where[MODULE_TARGET[0]]))
step("module_hook_symbols", module_symbols)
step("module_hook_reads", lambda: [MODULE_FILE.read_text() for _ in range(READS)])
step("module_hook_params", lambda: module_params("pg_inline_hook"))
step("check_module_hook", lambda: patchguard("check", "--json"))
step("rmmod_module_hook", lambda: run("rmmod", "pg_inline_hook"))
step("module_file_after", MODULE_FILE.read_text)
step("check_module_after", lambda: patchguard("check", "--json"))
step("kernel_log", lambda: steps.kernel_log("ftrace"))
steps.finish()
