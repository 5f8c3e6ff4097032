"""Shipped manifests under an approved exception, for the live tests that prove them: a ledger
where a reviewer approved one manifest, and `scan --json --surface ebpf` run against it; and the
one line a manifest that does not parse gives, for the unit tests of its checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import ManifestError, load_manifest, parse_manifest
from patchguard.signing import HostKey

MANIFESTS = Path(__file__).resolve().parents[2] / "src/patchguard/policy/manifests"


def manifest_error(text: str, name: str) -> str:
    """The message parsing `text` as the manifest file `name` fails with."""
    try:
        parse_manifest(text.encode(), name)
    except ManifestError as error:
        return str(error)
    raise AssertionError(f"{name} parsed, but should not have")


def approved_ledger(tmp_path: Path, manifest: Path, vendor_owner: str) -> Path:
    """A ledger in `tmp_path` where a security team approved `manifest`, requested by a key
    registered to `vendor_owner`, for 30 days."""
    path = tmp_path / "ledger.db"
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    vendor = HostKey.load_or_create(tmp_path / "vendor.key")
    approver = HostKey.load_or_create(tmp_path / "approver.key")
    ops.init_ledger(path, owner, "SRE team")
    ops.grant_key(path, owner, vendor.public_key_bytes(), vendor_owner, [])
    ops.grant_key(path, owner, approver.public_key_bytes(), "Security team", ["approve"])
    request = ops.request_exception(
        path, vendor, load_manifest(manifest), date.today() + timedelta(days=30)
    )
    ops.decide(path, approver, request.entry.seq, True, "reviewed for the live test")
    return path


def scan_ebpf(ledger: Path) -> tuple[int, dict[str, Any]]:
    """`patchguard scan --json --surface ebpf` with PATCHGUARD_LEDGER=`ledger`: exit code, doc."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "patchguard.cli",
            "scan",
            "--json",
            "--records",
            "--surface",
            "ebpf",
        ],
        env={**os.environ, "PATCHGUARD_LEDGER": str(ledger)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return out.returncode, doc
