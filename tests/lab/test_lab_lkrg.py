"""LKRG (Linux Kernel Runtime Guard), a legitimate in-kernel guard, beside patchguard in the lab
guest (Debian's 6.1): built at test time from its pinned source (shared/thirdparty, never
copied into the project) against the lab's headers, loaded, and sanctioned through the ledger
with the shipped policy/manifests/lkrg.toml, all by the CLI (lkrg_checks.py runs in the
guest).

- Without an exception: its kprobes on sensitive functions are findings that name LKRG, and
  every code change it causes is explained with LKRG (its kprobe handler) as the owner.
- With the manifest approved: every hook it declares is allowed, and so are the module's own
  taints (out of tree, O; unsigned, E: the lab cannot sign with a key Debian's kernel
  trusts) and the kernel's O and E taint flags, which LKRG alone shows: nothing of LKRG is
  above info unless allowed, each allowed finding naming the exception.
- Past the exception's expiry (the guest's clock moved on): its hooks, its taints and the
  kernel's taint flags are findings again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.lab_guest import CACHE, Results, lab_build, report, run_lab

pytestmark = pytest.mark.lab

SOURCE = Path(__file__).resolve().parents[3] / "shared/thirdparty/lkrg-ae1edab.tar.gz"
COMPILER = "gcc-12"  # what Debian's 6.1 kernels are built with
# What an unsigned, out-of-tree module always brings: posture's kernel taint flags and the
# module's own taints, which the approved manifest declares (taints = "OE").
SIGNATURE = {
    "taint-unsigned-module",
    "taint-out-of-tree-module",
    "unsigned-module",
    "out-of-tree-module",
}


def lkrg_cache() -> Path:
    """Where lkrg.ko built from this source against these headers is kept: the key hashes the
    pinned source and the lab build's key (the kernel and headers versions), so a second run on
    the same machine builds nothing (the build is minutes of the lab's time under load)."""
    lab = lab_build()
    digest = hashlib.sha256(f"{lab['key']} {lab['kernel_release']} {COMPILER}\n".encode())
    digest.update(SOURCE.read_bytes())
    return CACHE / "lkrg" / digest.hexdigest()[:16]


def compile_lkrg(work: Path, kbuild: Path) -> Path:
    with tarfile.open(SOURCE) as archive:
        archive.extractall(work, filter="data")
    (tree,) = [p for p in work.iterdir() if p.is_dir()]
    make = ["make", "-C", str(kbuild), f"M={tree}", f"CC={COMPILER}", "-j4", "modules"]
    done = subprocess.run(make, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return tree / "lkrg.ko"


def keep(built: Path, cached: Path) -> None:
    """Put `built` at `cached` by a rename of a complete copy (a run stopped halfway leaves no
    partial .ko for the next one), and drop the builds of older sources or headers."""
    staged = cached.parent / f".{cached.name}.{os.getpid()}"
    staged.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, staged / "lkrg.ko")
    shutil.rmtree(cached, ignore_errors=True)
    staged.rename(cached)
    for old in cached.parent.iterdir():
        if old != cached and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def build_lkrg(work: Path) -> Path:
    """lkrg.ko built from the pinned source (in `work`) against the lab kernel's headers, or
    the one an earlier run built from the same source and headers."""
    if not SOURCE.is_file():
        pytest.skip(f"no pinned LKRG source at {SOURCE}")
    kbuild = CACHE / "current" / "kbuild"
    if not kbuild.is_dir() or shutil.which(COMPILER) is None:
        pytest.skip("lab headers or gcc-12 missing: run lab/build")
    cached = lkrg_cache()
    if not (cached / "lkrg.ko").is_file():
        built = compile_lkrg(work, kbuild)
        if not os.access(CACHE, os.W_OK):
            return built
        keep(built, cached)
    return cached / "lkrg.ko"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    if not (CACHE / "current" / "lab.json").is_file():
        pytest.skip("lab not built: run lab/build")
    results = tmp_path_factory.mktemp("lkrg")
    shutil.copy2(build_lkrg(tmp_path_factory.mktemp("lkrg-build")), results / "lkrg.ko")
    command = ["python3", "/src/tests/lab/lkrg_checks.py", "/results"]
    run = run_lab(results, (), command, timeout=900, kaslr=False)
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


def test_the_approved_manifest_leaves_nothing_of_lkrg_above_info(guest: Results) -> None:
    ledger = guest["ledger"]
    assert ledger["approve"]["rc"] == 0, ledger
    findings = report(guest, "scan_allowed")["findings"]
    allowed = [f for f in findings if f["disposition"] == "allowed"]
    assert sum(f["technique"].startswith("kprobe") for f in allowed) >= 5, allowed
    assert {f["technique"] for f in allowed} >= SIGNATURE, allowed
    assert all(f["summary"].startswith("allowed by exception #") for f in allowed), allowed
    assert all("Openwall" in f["summary"] for f in allowed if _lkrg(f)), allowed
    taints = [f for f in allowed if f["surface"] == "posture"]
    assert all(f["evidence"]["modules"] == ["lkrg"] for f in taints), taints
    assert [f for f in _above_info(guest, "scan_allowed") if _lkrg(f)] == []
    assert not [f for f in findings if f["technique"] == "exception-mismatch"], findings
    for step in ("check_bare", "check_allowed"):
        assert report(guest, step)["summary"]["critical"] == 0


def test_lkrg_hooks_are_findings_again_once_the_exception_expired(guest: Results) -> None:
    assert guest["clock"]["rc"] == 0, guest["clock"]
    expired = _above_info(guest, "scan_expired")
    kprobes = [f for f in expired if f["technique"].startswith("kprobe") and _lkrg(f)]
    assert len(kprobes) >= 5, expired
    assert {f["technique"] for f in expired} >= SIGNATURE, expired
    assert not any(f["disposition"] == "allowed" for f in report(guest, "scan_expired")["findings"])
