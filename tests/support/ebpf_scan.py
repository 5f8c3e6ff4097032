"""The ebpf surface as `patchguard scan --json --surface ebpf` prints it, in a subprocess (the
way users run it), and the records and findings of one program in it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def scan_json(surface: str = "ebpf") -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "patchguard.cli",
        "scan",
        "--json",
        "--records",
        "--surface",
        surface,
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def programs(doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    ebpf = next(s for s in doc["surfaces"] if s["name"] == "ebpf")
    return {r["prog_id"]: r for r in ebpf["records"] if r["kind"] == "BpfProgram"}


def findings_for(doc: dict[str, Any], prog_id: int) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["evidence"].get("prog_id") == prog_id]
