"""Run INSIDE the lab guest (by test_lab_function_hooks.py through lab/run): test rootkits that
hook functions (ftrace, kprobes) or hide a module, and the livepatch module, and what patchguard
says about them, as one JSON document written to <results>/guest_function_hooks.json (argv[1],
default /results, where the host put the .ko files).

Steps: find where the kprobe's second probe goes (the instruction after commit_creds' ftrace
NOP); `patchguard baseline create`; `check`; insmod pg_ftrace_hook, pg_kprobe_hook and
pg_livepatch (waiting for the livepatch transition); make the hooks run; record what the kernel
shows (enabled_functions, kprobes/list, /sys/kernel/livepatch); `check --json`, `scan --json
--surface tracing --surface modules`; unload all three (the livepatch disabled first); `check`
again; then insmod pg_hide_module, which cannot be unloaded, and `scan --surface modules`.
Each step is measured, not asserted, so the host test can say which one failed; a step that
raises is recorded as that step's error and the rest still run."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params, pg_symbols

from patchguard.kernel import Kernel
from patchguard.x86 import insn as x86

WORK = Path("/tmp/patchguard-rootkits2")
steps = Steps("guest_function_hooks", Path(sys.argv[1] if len(sys.argv) > 1 else "/results"), WORK)
step, run, patchguard, insmod = steps.step, steps.run, steps.patchguard, steps.insmod
FTRACE_TARGET = "__x64_sys_getdents64"
KPROBE_TARGET = "commit_creds"
LIVEPATCH = "pg_livepatch"
LIVEPATCH_TARGET = "cmdline_proc_show"
KLP = Path("/sys/kernel/livepatch")
ENABLED_FUNCTIONS = Path("/sys/kernel/tracing/enabled_functions")
KPROBE_LIST = Path("/sys/kernel/debug/kprobes/list")
HIDE = "pg_hide_module"
out = steps.out


def addresses() -> dict[str, Any]:
    """The probed and patched functions, and the kprobe's body offset: the instruction right
    after commit_creds' 5-byte ftrace NOP (so that probe is an INT3, not an ftrace kprobe)."""
    kernel = Kernel()
    try:
        syms = kernel.kallsyms
        found = {n: syms.address_of(n) for n in (FTRACE_TARGET, KPROBE_TARGET, LIVEPATCH_TARGET)}
        missing = [name for name, address in found.items() if address is None]
        if missing:
            raise LookupError(f"not in kallsyms: {', '.join(missing)}")
        entry = kernel.memory().read(found[KPROBE_TARGET] or 0, 5)
        if entry != x86.NOP5:
            raise LookupError(f"{KPROBE_TARGET} does not start with the ftrace NOP5: {entry.hex()}")
        result: dict[str, Any] = {name: hex(a) for name, a in found.items() if a is not None}
        result["kprobe_offset"] = len(x86.NOP5)
        return result
    finally:
        kernel.close()


def read_tree(root: Path) -> dict[str, str]:
    """Every readable file under root (sysfs attributes), relative path -> content; a
    directory maps to "/"."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            found[str(path.relative_to(root))] = "/"
        elif path.is_file():
            try:
                found[str(path.relative_to(root))] = path.read_text().strip()
            except OSError as exc:
                found[str(path.relative_to(root))] = f"<{exc.strerror}>"
    return found


def livepatch_wait(enabled: bool) -> dict[str, Any]:
    """Wait (30 s at most) for the livepatch transition to finish; signal stragglers."""
    where = KLP / LIVEPATCH
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        if not where.exists():
            return {"gone": True, "seconds": round(time.monotonic() - t0, 2)}
        if (where / "transition").read_text().strip() == "0":
            state = (where / "enabled").read_text().strip()
            return {"enabled": state, "seconds": round(time.monotonic() - t0, 2)}
        if time.monotonic() - t0 > 5 and (where / "signal").exists():
            (where / "signal").write_text("1")
        time.sleep(0.2)
    raise TimeoutError(f"livepatch transition to enabled={int(enabled)} did not finish in 30 s")


def load() -> dict[str, Any]:
    where = out.get("addresses") or {}
    loaded = {
        "ftrace": insmod("pg_ftrace_hook", f"func={FTRACE_TARGET}"),
        "kprobe": insmod(
            "pg_kprobe_hook", f"func={KPROBE_TARGET}", f"offset={where['kprobe_offset']}"
        ),
        "livepatch": insmod(LIVEPATCH),
    }
    if loaded["livepatch"]["rc"] == 0:
        loaded["livepatch_transition"] = livepatch_wait(True)
    time.sleep(1)  # the kprobe optimizer runs a few jiffies after registration
    return loaded


def trigger() -> dict[str, Any]:
    """Make the hooks run: getdents64 (a /proc listing), commit_creds (an exec) and
    /proc/cmdline (the livepatched function)."""
    listed = len(os.listdir("/proc"))
    execs = run("true")["rc"]
    return {"proc_entries": listed, "exec_rc": execs, "cmdline": Path("/proc/cmdline").read_text()}


def kernel_views() -> dict[str, Any]:
    """What the kernel shows of the hooks: enabled_functions lines of the hooked functions,
    kprobes/list, /sys/kernel/livepatch and the modules' counters."""
    functions = (FTRACE_TARGET, KPROBE_TARGET, LIVEPATCH_TARGET)
    enabled = ENABLED_FUNCTIONS.read_text().splitlines()
    return {
        "enabled_functions": [line for line in enabled if line.split()[0] in functions],
        "kprobes": KPROBE_LIST.read_text().splitlines(),
        "livepatch": read_tree(KLP),
        "ftrace_params": module_params("pg_ftrace_hook"),
        "kprobe_params": module_params("pg_kprobe_hook"),
        "symbols": pg_symbols(),
    }


def unload() -> dict[str, Any]:
    done: dict[str, Any] = {
        "ftrace": run("rmmod", "pg_ftrace_hook"),
        "kprobe": run("rmmod", "pg_kprobe_hook"),
    }
    enabled = KLP / LIVEPATCH / "enabled"
    if enabled.exists():
        enabled.write_text("0")
        done["livepatch_transition"] = livepatch_wait(False)
    done["livepatch"] = run("rmmod", LIVEPATCH)
    done["left"] = [
        line for line in Path("/proc/modules").read_text().splitlines() if "pg_" in line
    ]
    return done


def hidden_views() -> dict[str, Any]:
    """Where pg_hide_module still shows after it hid itself."""
    vmalloc = Path("/proc/vmallocinfo").read_text().splitlines()
    return {
        "proc_modules": HIDE in Path("/proc/modules").read_text(),
        "sysfs": (Path("/sys/module") / HIDE).exists(),
        "kallsyms": [s for s, where in pg_symbols().items() if where.endswith(f"[{HIDE}]")],
        "vmalloc_callers": [line for line in vmalloc if f"[{HIDE}]" in line],
        "taint": int(Path("/proc/sys/kernel/tainted").read_text()),
    }


ACME = """\
vendor = "Acme Security"
product = "acme-lab-hooks"
version = "1.0"
contact = "security@acme.example"
justification = "The lab's ftrace, kprobe and livepatch modules, declared as a vendor would."

[[ftrace]]
function = "__x64_sys_getdents64"
owner = "pg_ftrace_callback"
module = "pg_ftrace_hook"

[[kprobe]]
symbol = "commit_creds"

[[kprobe]]
symbol = "commit_creds"
offset = %d

[[livepatch]]
name = "pg_livepatch"
functions = ["cmdline_proc_show"]
"""


def exception_ledger() -> dict[str, Any]:
    """A fresh ledger in which a reviewer approved Acme's manifest of the loaded hooks: what
    `scan --ledger` must then show as allowed."""
    from datetime import date, timedelta

    from patchguard.policy import exceptions as ops
    from patchguard.policy.manifest import parse_manifest
    from patchguard.signing import HostKey

    keys = {n: HostKey.load_or_create(WORK / f"{n}.key") for n in ("owner", "acme", "review")}
    path = WORK / "ledger.db"
    ops.init_ledger(path, keys["owner"], "Lab owner")
    ops.grant_key(path, keys["owner"], keys["acme"].public_key_bytes(), "Acme Security", [])
    ops.grant_key(path, keys["owner"], keys["review"].public_key_bytes(), "Review", ["approve"])
    offset = (out.get("addresses") or {})["kprobe_offset"]
    manifest = parse_manifest((ACME % offset).encode(), "acme.toml")
    request = ops.request_exception(path, keys["acme"], manifest, date.today() + timedelta(30))
    ops.decide(path, keys["review"], request.entry.seq, True, "lab review")
    return {"ledger": str(path), "request": request.entry.seq}


step("addresses", addresses)
step("livepatch_supported", lambda: KLP.is_dir())
step("cmdline_before", lambda: Path("/proc/cmdline").read_text())
step("baseline", lambda: patchguard("baseline", "create"))
step("check_before", lambda: patchguard("check", "--json"))
if out["addresses"]:
    step("load", load)
step("trigger", trigger)
step("views", kernel_views)
step("check_loaded", lambda: patchguard("check", "--json"))
step(
    "scan_loaded",
    lambda: patchguard("scan", "--json", "--surface", "tracing", "--surface", "modules"),
)
step("exception_ledger", exception_ledger)
step(
    "scan_allowed",
    lambda: patchguard(
        "scan", "--json", "--surface", "tracing", "--ledger", str(WORK / "ledger.db")
    ),
)
step("unload", unload)
step("trigger_after", trigger)
step("kprobes_after", lambda: KPROBE_LIST.read_text().splitlines())
step("check_after", lambda: patchguard("check", "--json"))
step("insmod_hide", lambda: insmod(HIDE))
step("hidden_views", hidden_views)
step("scan_hidden", lambda: patchguard("scan", "--json", "--surface", "modules"))
step("kernel_log", lambda: steps.kernel_log("livepatch", "ftrace"))
steps.finish()
