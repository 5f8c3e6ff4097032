"""Exceptions on the running kernel: a BPF program that matches an approved manifest exactly
is `allowed (exception #N)` in `scan`; the same program with one more helper is a finding that
names the difference; after expiry the findings are back."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp

from patchguard.kernel import Kernel
from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import parse_manifest
from patchguard.policy.match import apply_exceptions
from patchguard.signing import HostKey
from patchguard.surfaces.ebpf import EbpfSurface

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
NAME = "pg_t_sanct"
EXPIRES = date.today() + timedelta(days=30)


def manifest_text() -> str:
    exe = os.path.realpath(sys.executable)
    digest = hashlib.sha256(Path(exe).read_bytes()).hexdigest()
    return f"""
vendor = "Test Vendor"
product = "pg-sensor"
version = "1.0"
contact = "security@test.invalid"
justification = "counts kill(2) calls for the live tests"

[[bpf_program]]
name = "{NAME}"
prog_type = "tracepoint"
attach = ["tracepoint:sys_enter_kill"]
helpers = []
loader = {{ path = "{exe}", sha256 = "{digest}" }}
"""


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    vendor = HostKey.load_or_create(tmp_path / "vendor.key")
    approver = HostKey.load_or_create(tmp_path / "approver.key")
    ops.init_ledger(path, owner, "SRE team")
    ops.grant_key(path, owner, vendor.public_key_bytes(), "Test Vendor", [])
    ops.grant_key(path, owner, approver.public_key_bytes(), "Security team", ["approve"])
    manifest = parse_manifest(manifest_text().encode(), "pg-sensor.toml")
    request = ops.request_exception(path, vendor, manifest, EXPIRES)
    ops.decide(path, approver, request.entry.seq, True, "reviewed for the test")
    return path


def scan(ledger: Path) -> dict[str, Any]:
    env = {**os.environ, "PATCHGUARD_LEDGER": str(ledger)}
    out = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "scan", "--json", "--surface", "ebpf"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def about(doc: dict[str, Any], prog_id: int) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["evidence"].get("prog_id") == prog_id]


def test_matching_program_is_allowed_and_shown(ledger: Path) -> None:
    with bp.attach_tracepoint("syscalls", "sys_enter_kill", NAME) as prog:
        found = about(scan(ledger), prog.prog_id)
    assert found, "an allowed hook is shown, not hidden"
    assert all(f["disposition"] == "allowed" for f in found), found
    assert all(f["summary"].startswith("allowed by exception #") for f in found)


def test_extra_helper_is_not_covered_and_says_why(ledger: Path) -> None:
    insns = bp.calls_helper(bp.BPF_FUNC_send_signal)
    with bp.attach_tracepoint("syscalls", "sys_enter_kill", NAME, insns) as prog:
        found = {f["technique"]: f for f in about(scan(ledger), prog.prog_id)}
    assert found["exception-mismatch"]["severity"] == "high"
    assert "calls helpers not declared: bpf_send_signal" in found["exception-mismatch"]["summary"]
    assert found["rootkit-helper"]["disposition"] == "suspicious"


def test_expired_exception_covers_nothing(ledger: Path) -> None:
    after = datetime.combine(EXPIRES, datetime.min.time(), UTC) + timedelta(seconds=1)
    kernel = Kernel()
    try:
        with bp.attach_tracepoint("syscalls", "sys_enter_kill", NAME) as prog:
            state = EbpfSurface().collect(kernel)
            findings = EbpfSurface().assess(state)
    finally:
        kernel.close()
    now = apply_exceptions(findings, state.records, ops.live_exceptions(ledger))
    later = apply_exceptions(findings, state.records, ops.live_exceptions(ledger, after))
    ours_now = [f for f in now if f.evidence.get("prog_id") == prog.prog_id]
    ours_later = [f for f in later if f.evidence.get("prog_id") == prog.prog_id]
    assert ours_now and all(f.disposition == "allowed" for f in ours_now)
    assert ours_later and all(f.disposition == "suspicious" for f in ours_later)
