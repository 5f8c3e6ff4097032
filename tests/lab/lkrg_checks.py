"""Run INSIDE the lab guest (by test_lab_lkrg.py through lab/run): LKRG, the runtime guard,
loaded beside patchguard, and sanctioned through the exception ledger with the shipped
manifest, all by the CLI. Writes <results>/lkrg_checks.json (argv[1], default /results,
where the host put lkrg.ko, built from the pinned source).

Steps: baseline; lkrg.ko installed under /lib/modules and modprobed; its kprobes and ftrace
sites as the kernel lists them; scan and check with no ledger; a ledger where a security team
approves the vendor's request for policy/manifests/lkrg.toml; scan and check with it; the
guest clock moved past the exception's expiry; scan again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from guest_steps import Steps

MANIFEST = "/src/src/patchguard/policy/manifests/lkrg.toml"
WORK = Path("/tmp/patchguard-lkrg")
steps = Steps("lkrg_checks", Path(sys.argv[1] if len(sys.argv) > 1 else "/results"), WORK)
LEDGER = str(WORK / "ledger.db")
EXPIRES = date.today() + timedelta(days=2)


def install() -> dict[str, Any]:
    extra = Path(f"/lib/modules/{os.uname().release}/extra")
    extra.mkdir(parents=True, exist_ok=True)
    shutil.copy2(steps.results / "lkrg.ko", extra / "lkrg.ko")
    depmod = steps.run("depmod", "-a")
    loaded = steps.run("modprobe", "lkrg")
    time.sleep(5)  # LKRG hashes the kernel once at load
    return {"depmod": depmod, "modprobe": loaded, "lsmod": steps.run("lsmod")["stdout"]}


def kernel_lists() -> dict[str, str]:
    return {
        "kprobes": Path("/sys/kernel/debug/kprobes/list").read_text(),
        "enabled_functions": Path("/sys/kernel/tracing/enabled_functions").read_text(),
        "taint": Path("/sys/module/lkrg/taint").read_text().strip(),
    }


def key(name: str) -> str:
    """A new actor key; its public key, hex."""
    shown = steps.patchguard("ledger", "key-show", "--create", "--key", str(WORK / name))
    return str(shown["stdout"].split("public key ")[1].split()[0])


def approve() -> dict[str, Any]:
    """The ledger, by the CLI: the SRE team owns it, Openwall (LKRG's vendor) asks, the
    security team approves."""
    at = ("--ledger", LEDGER)
    owner = str(WORK / "owner.key")
    key("owner.key")
    done = {"init": steps.patchguard("ledger", "init", *at, "--key", owner, "--owner", "SRE")}
    vendor, approver = key("vendor.key"), key("approver.key")
    done["vendor"] = steps.patchguard(
        "ledger", "key-add", vendor, "--owner", "Openwall", "--key", owner, *at
    )
    done["approver"] = steps.patchguard(
        "ledger", "key-add", approver, "--owner", "Security", "--role", "approve", "--key", owner,
        *at,
    )  # fmt: skip
    done["request"] = steps.patchguard(
        "exceptions", "request", MANIFEST, "--expires", EXPIRES.isoformat(),
        "--key", str(WORK / "vendor.key"), *at,
    )  # fmt: skip
    request = done["request"]["stdout"].split("exception #")[1].split()[0]
    done["approve"] = steps.patchguard(
        "exceptions", "approve", request, "--reason", "LKRG reviewed", "--key",
        str(WORK / "approver.key"), *at,
    )  # fmt: skip
    done["list"] = steps.patchguard("exceptions", "list", *at)
    return done


def with_ledger(*args: str) -> dict[str, Any]:
    steps.env["PATCHGUARD_LEDGER"] = LEDGER
    return steps.patchguard(*args)


def past_expiry() -> dict[str, Any]:
    later = (EXPIRES + timedelta(days=1)).isoformat()
    return steps.run("date", "-s", f"{later} 12:00:00")


steps.step("baseline", lambda: steps.patchguard("baseline", "create"))
steps.step("install", install)
steps.step("lists", kernel_lists)
steps.step("scan_bare", lambda: steps.patchguard("scan", "--json"))
steps.step("check_bare", lambda: steps.patchguard("check", "--json"))
steps.step("ledger", approve)
steps.step("scan_allowed", lambda: with_ledger("scan", "--json"))
steps.step("check_allowed", lambda: with_ledger("check", "--json"))
steps.step("clock", past_expiry)
steps.step("scan_expired", lambda: with_ledger("scan", "--json"))
subprocess.run(["rmmod", "lkrg"], check=False)
steps.finish()
