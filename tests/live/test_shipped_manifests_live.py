"""The manifests patchguard ships, proven on the running kernel: the tool runs, its hooks match
its manifest exactly, and once the manifest is approved nothing about it is above info."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from patchguard.engine.keys import HostKey
from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import load_manifest

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
MANIFESTS = Path(__file__).resolve().parents[2] / "src/patchguard/policy/manifests"
ONE_LINER = "tracepoint:syscalls:sys_enter_kill { @[comm] = count(); }"


def approved_ledger(tmp_path: Path, manifest: Path) -> Path:
    path = tmp_path / "ledger.db"
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    vendor = HostKey.load_or_create(tmp_path / "vendor.key")
    approver = HostKey.load_or_create(tmp_path / "approver.key")
    ops.init_ledger(path, owner, "SRE team")
    ops.grant_key(path, owner, vendor.public_key_bytes(), "bpftrace packagers", [])
    ops.grant_key(path, owner, approver.public_key_bytes(), "Security team", ["approve"])
    request = ops.request_exception(
        path, vendor, load_manifest(manifest), date.today() + timedelta(days=30)
    )
    ops.decide(path, approver, request.entry.seq, True, "the SRE kill counter")
    return path


def test_bpftrace_one_liner_is_covered_by_its_shipped_manifest(tmp_path: Path) -> None:
    if not Path("/usr/bin/bpftrace").exists():
        pytest.fail("bpftrace is not installed: scripts/setup --dev installs it")
    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "bpftrace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    manifest = MANIFESTS / "bpftrace-killcount.toml"
    assert load_manifest(manifest).version == version, (
        f"bpftrace {version} is installed; the shipped manifest is for another build"
    )
    ledger = approved_ledger(tmp_path, manifest)
    tracer = subprocess.Popen(
        ["bpftrace", "-e", ONE_LINER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert tracer.stdout is not None
        for line in tracer.stdout:  # "Attaching 1 probe..." once the program is attached
            if line.startswith("Attaching"):
                break
        env = {**os.environ, "PATCHGUARD_LEDGER": str(ledger)}
        out = subprocess.run(
            [sys.executable, "-m", "patchguard.cli", "scan", "--json", "--surface", "ebpf"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        doc: dict[str, Any] = json.loads(out.stdout)
    finally:
        tracer.send_signal(signal.SIGINT)  # bpftrace prints its map and detaches
        tracer.wait(timeout=30)
    mine = [
        f
        for f in doc["findings"]
        if f["evidence"].get("name") == "sys_enter_kill"
        or "bpftrace" in str(f["evidence"].get("owners"))
    ]
    assert mine, "bpftrace's program is reported (as allowed), not hidden"
    acting = [f for f in mine if f["disposition"] != "allowed" and f["severity"] != "info"]
    assert acting == [], acting
    assert out.returncode == 0, "allowed hooks do not fail the scan"
