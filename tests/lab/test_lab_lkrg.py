"""LKRG (Linux Kernel Runtime Guard), a legitimate in-kernel guard, beside patchguard in the lab
guest (Debian's 6.1): built at test time from its pinned source (shared/thirdparty, never
copied into the project) against the lab's headers, loaded, and sanctioned through the ledger
with the shipped policy/manifests/lkrg.toml, all by the CLI (lkrg_checks.py runs in the
guest).

- Without an exception: its kprobes on sensitive functions are findings that name LKRG, and
  every code change it causes is explained with LKRG (its kprobe handler) as the owner.
- With the manifest approved: every hook it declares is allowed. What stays above info is
  its signature: the lab cannot sign a module with a key Debian's kernel trusts (taint E), and
  a [[module]] exception covers only a module loaded with a valid signature.
- Past the exception's expiry (the guest's clock moved on): its hooks are findings again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.lab_guest import CACHE, Results, report, run_lab

pytestmark = pytest.mark.lab

SOURCE = Path(__file__).resolve().parents[3] / "shared/thirdparty/lkrg-ae1edab.tar.gz"
COMPILER = "gcc-12"  # what Debian's 6.1 kernels are built with
# What an unsigned, out-of-tree module always brings (posture's kernel taint, the module's own
# taints, and the [[module]] declaration it cannot meet without a valid signature).
SIGNATURE = {
    "taint-unsigned-module",
    "taint-out-of-tree-module",
    "unsigned-module",
    "out-of-tree-module",
    "exception-mismatch",
}


def build_lkrg(work: Path) -> Path:
    """lkrg.ko built from the pinned source in `work` against the lab kernel's headers."""
    if not SOURCE.is_file():
        pytest.skip(f"no pinned LKRG source at {SOURCE}")
    kbuild = CACHE / "current" / "kbuild"
    if not kbuild.is_dir() or shutil.which(COMPILER) is None:
        pytest.skip("lab headers or gcc-12 missing: run lab/build")
    with tarfile.open(SOURCE) as archive:
        archive.extractall(work, filter="data")
    (tree,) = [p for p in work.iterdir() if p.is_dir()]
    make = ["make", "-C", str(kbuild), f"M={tree}", f"CC={COMPILER}", "-j4", "modules"]
    done = subprocess.run(make, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return tree / "lkrg.ko"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    if not (CACHE / "current" / "lab.json").is_file():
        pytest.skip("lab not built: run lab/build")
    results = tmp_path_factory.mktemp("lkrg")
    shutil.copy2(build_lkrg(tmp_path_factory.mktemp("lkrg-build")), results / "lkrg.ko")
    command = ["python3", "/src/tests/lab/lkrg_checks.py", "/results"]
    run = run_lab(results, (), command, timeout=900)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stderr[-8000:]}"
    found: Results = json.loads((results / "lkrg_checks.json").read_text())
    assert "errors" not in found, found["errors"]
    assert found["install"]["modprobe"]["rc"] == 0, found["install"]
    return found


def _lkrg(finding: dict[str, Any]) -> bool:
    return "lkrg" in json.dumps(finding).lower() or finding["subject"] in ("taint E", "taint O")


def _above_info(guest: Results, step: str) -> list[dict[str, Any]]:
    findings = report(guest, step)["findings"]
    return [f for f in findings if f["severity"] != "info" and f["disposition"] != "allowed"]


def test_lkrg_kprobes_are_findings_that_name_it(guest: Results) -> None:
    kprobes = [f for f in _above_info(guest, "scan_bare") if f["technique"].startswith("kprobe")]
    assert len(kprobes) >= 5, report(guest, "scan_bare")["findings"]
    assert all("[lkrg]" in f["summary"] for f in kprobes), kprobes


def test_every_code_change_lkrg_causes_is_explained_with_lkrg_as_owner(guest: Results) -> None:
    """LKRG's changes are its kprobes: INT3 or optimized JMPs, and ftrace sites and ftrace_call
    for those on ftrace; each says whose kprobe it is. Every other explained change (a static
    key something else flipped) still names an owner."""
    doc = report(guest, "check_bare")
    changes = [f for f in doc["findings"] if f["disposition"] == "explained"]
    ours = [f for f in changes if f["technique"] in ("kprobe", "ftrace-site", "ftrace-caller")]
    assert len(ours) >= 30, doc["findings"]
    for f in ours:
        owner = f["evidence"]["owner"]
        assert "[lkrg]" in owner or "registered by lkrg" in owner, f
    for f in changes:
        assert f["evidence"]["owner"], f
        assert "kprobe of kprobe" not in f["summary"] and "kprobe on kprobe" not in f["summary"]
    assert not [f for f in doc["findings"] if f["disposition"] == "tampering"]


def test_the_approved_manifest_leaves_only_lkrg_signature_above_info(guest: Results) -> None:
    ledger = guest["ledger"]
    assert ledger["approve"]["rc"] == 0, ledger
    allowed = [
        f for f in report(guest, "scan_allowed")["findings"] if f["disposition"] == "allowed"
    ]
    assert sum(f["technique"].startswith("kprobe") for f in allowed) >= 5, allowed
    left = [f for f in _above_info(guest, "scan_allowed") if _lkrg(f)]
    assert {f["technique"] for f in left} <= SIGNATURE, left
    mismatches = [f for f in left if f["technique"] == "exception-mismatch"]
    assert all("taint E" in f["summary"] for f in mismatches), mismatches
    for step in ("check_bare", "check_allowed"):
        assert report(guest, step)["summary"]["critical"] == 0


def test_lkrg_hooks_are_findings_again_once_the_exception_expired(guest: Results) -> None:
    assert guest["clock"]["rc"] == 0, guest["clock"]
    expired = _above_info(guest, "scan_expired")
    kprobes = [f for f in expired if f["technique"].startswith("kprobe") and _lkrg(f)]
    assert len(kprobes) >= 5, expired
    assert not any(f["disposition"] == "allowed" for f in report(guest, "scan_expired")["findings"])
