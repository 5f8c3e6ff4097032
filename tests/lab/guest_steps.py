"""What the lab's rootkit scripts (guest_*.py, run INSIDE the guest) share: steps that
are measured, not asserted, into one JSON document, and the commands they run.

A step that raises is recorded as that step's error and the rest still run, so the host test
can say which one failed and the modules are still unloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Steps:
    def __init__(self, name: str, results: Path, work: Path) -> None:
        self.name = name
        self.results = results  # where the host put the .ko files and takes the JSON back
        self.out: dict[str, Any] = {"steps": {}}
        work.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PATCHGUARD_KEY": str(work / "host.key"),
            "PATCHGUARD_BASELINE": str(work / "baseline.zip"),
        }

    def step(self, name: str, measure: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            value = measure()
        except Exception as exc:
            value = None
            self.out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        self.out["steps"][name] = round(time.monotonic() - t0, 2)
        self.out[name] = value
        print(f"{self.name}: {name}: {self.out['steps'][name]} s", file=sys.stderr, flush=True)
        return value

    def run(self, *argv: str) -> dict[str, Any]:
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, check=False)
        return {"rc": done.returncode, "stdout": done.stdout[-4000:], "stderr": done.stderr[-4000:]}

    def patchguard(self, *args: str) -> dict[str, Any]:
        """One patchguard command (`python3 -m patchguard.cli`: the guest has no console
        script); with --json its document is returned parsed, with every surface's records."""
        if "--json" in args and args[0] in ("scan", "check"):
            args = (*args, "--records")
        done = subprocess.run(
            [sys.executable, "-m", "patchguard.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        result: dict[str, Any] = {"rc": done.returncode, "stderr": done.stderr[-4000:]}
        if "--json" in args and done.stdout.strip():
            result["report"] = json.loads(done.stdout)
        else:
            result["stdout"] = done.stdout[-4000:]
        return result

    def insmod(self, module: str, *params: str) -> dict[str, Any]:
        ko = str(self.results / f"{module}.ko")
        return {"params": list(params), **self.run("insmod", ko, *params)}

    def kernel_log(self, *words: str) -> list[str]:
        lines = self.run("dmesg")["stdout"].splitlines()
        keep = ("pg_", "BUG", "Oops", "WARNING", "general protection", *words)
        return [line for line in lines if any(word in line for word in keep)]

    def finish(self) -> None:
        (self.results / f"{self.name}.json").write_text(json.dumps(self.out, indent=1))
        print(json.dumps({"steps": self.out["steps"], "errors": self.out.get("errors", {})}))


def kernel_address(name: str) -> int:
    """Where /proc/kallsyms puts `name` (a function of the kernel); LookupError if nowhere."""
    from patchguard.kernel import Kernel

    kernel = Kernel()
    try:
        found = kernel.kallsyms.address_of(name)
    finally:
        kernel.close()
    if found is None:
        raise LookupError(f"{name} is not in kallsyms")
    return found


def module_params(module: str) -> dict[str, str]:
    where = Path("/sys/module") / module / "parameters"
    return {p.name: p.read_text().strip() for p in sorted(where.iterdir())}


def pg_symbols() -> dict[str, str]:
    """Every symbol of the pg_* modules in /proc/kallsyms: name -> "0xaddress [module]"."""
    found: dict[str, str] = {}
    for line in Path("/proc/kallsyms").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].startswith("[pg_"):
            found[parts[2]] = f"0x{parts[0]} {parts[3]}"
    return found
