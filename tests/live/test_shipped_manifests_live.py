"""The manifests patchguard ships, proven on the running kernel: the tool runs, its hooks match
its manifest exactly, and once the manifest is approved nothing about it is above info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp
from support.corpus import interrupt, loader_release

from patchguard.kernel.bpf.objects import all_progs
from patchguard.kernel.bpf.syscall import BpfError
from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import load_manifest
from patchguard.signing import HostKey

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
MANIFESTS = Path(__file__).resolve().parents[2] / "src/patchguard/policy/manifests"
ONE_LINER = "tracepoint:syscalls:sys_enter_kill { @[comm] = count(); }"
READ_AND_KILL = (
    "tracepoint:syscalls:sys_enter_kill { @k[comm] = count(); } "
    "kfunc:vfs_read { @r[comm] = count(); }"
)


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


def wait_for_programs(names: set[str], tracer: subprocess.Popen[str]) -> bool:
    """Until bpftrace's programs are loaded (it prints "Attaching" before it attaches, and under
    the lab's emulation attaching takes seconds)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and tracer.poll() is None:
        if names <= {p.name for p in all_progs()}:
            time.sleep(0.5)  # loaded, then attached: give the attach its moment
            return True
        time.sleep(0.2)
    return False


def scan_under(
    manifest: Path, program: str, names: set[str], tmp_path: Path
) -> tuple[int, dict[str, Any]]:
    """Run the bpftrace `program`, and `scan --json --surface ebpf` under an approved
    exception for `manifest` while its programs `names` are attached."""
    loader_release(manifest)  # a stale pin fails here, naming the release and hash to add
    ledger = approved_ledger(tmp_path, manifest)
    tracer = subprocess.Popen(
        ["bpftrace", "-e", program], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    said: list[str] = []  # read all along: bpftrace must never block on a full pipe
    threading.Thread(target=lambda: said.extend(tracer.stdout or ()), daemon=True).start()
    try:
        assert wait_for_programs(names, tracer), f"bpftrace did not attach: {said}"
        env = {**os.environ, "PATCHGUARD_LEDGER": str(ledger)}
        out = subprocess.run(
            [sys.executable, "-m", "patchguard.cli", "scan", "--json", "--surface", "ebpf"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        doc: dict[str, Any] = json.loads(out.stdout)
    finally:
        interrupt(tracer)  # bpftrace prints its maps and detaches
    return out.returncode, doc


def bpftrace_findings(doc: dict[str, Any], names: set[str]) -> list[dict[str, Any]]:
    return [
        f
        for f in doc["findings"]
        if f["evidence"].get("name") in names or "bpftrace" in str(f["evidence"].get("owners"))
    ]


def test_bpftrace_one_liner_is_covered_by_its_shipped_manifest(tmp_path: Path) -> None:
    manifest = MANIFESTS / "bpftrace-killcount.toml"
    rc, doc = scan_under(manifest, ONE_LINER, {"sys_enter_kill"}, tmp_path)
    mine = bpftrace_findings(doc, {"sys_enter_kill"})
    assert mine, "bpftrace's program is reported (as allowed), not hidden"
    acting = [f for f in mine if f["disposition"] != "allowed" and f["severity"] != "info"]
    assert acting == [], acting
    assert rc == 0, "allowed hooks do not fail the scan"


def test_bpftrace_fentry_and_tracepoint_one_liner_under_its_manifest(tmp_path: Path) -> None:
    try:
        bp.attach_fentry("vfs_read", "pg_t_probe").close()
    except BpfError as exc:
        pytest.skip(f"fentry refused by this kernel ({exc}); the lab runs this")
    manifest = MANIFESTS / "bpftrace-read-kill.toml"
    rc, doc = scan_under(manifest, READ_AND_KILL, {"sys_enter_kill", "vfs_read"}, tmp_path)
    mine = bpftrace_findings(doc, {"sys_enter_kill", "vfs_read"})
    assert {f["evidence"].get("name") for f in mine} >= {"vfs_read", "sys_enter_kill"}
    acting = [f for f in mine if f["disposition"] != "allowed" and f["severity"] != "info"]
    assert acting == [], acting
    assert rc == 0, "allowed hooks do not fail the scan"
