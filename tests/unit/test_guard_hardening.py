"""The guard's memory of its start: the baseline it pinned, the surfaces it could read; and
the unit that brings it back after any exit."""

from __future__ import annotations

import configparser
from pathlib import Path

from patchguard.guard.tamper import BaselinePin, CodePin, SurfaceWatch, baseline_digest
from patchguard.signing import HostKey
from patchguard.surfaces.base import Status
from patchguard.techniques import TECHNIQUES

UNIT = Path(__file__).parents[2] / "src/patchguard/guard/patchguard-guard.service"


def test_the_same_baseline_is_no_finding(tmp_path: Path) -> None:
    path = tmp_path / "baseline.zip"
    path.write_bytes(b"signed baseline bytes")
    pin = BaselinePin.take(path)
    assert pin.check() == []
    path.write_bytes(b"signed baseline bytes")  # rewritten, same content
    assert pin.check() == []


def test_a_recreated_baseline_is_critical(tmp_path: Path) -> None:
    path = tmp_path / "baseline.zip"
    path.write_bytes(b"signed baseline bytes")
    pin = BaselinePin.take(path)
    path.write_bytes(b"another baseline, signed by the same host key")
    (finding,) = pin.check()
    assert finding.technique == "baseline-replaced" and finding.severity.label == "critical"
    assert finding.evidence["pinned"] == pin.digest != finding.evidence["now"]


def test_a_removed_or_swapped_baseline_is_critical(tmp_path: Path) -> None:
    path = tmp_path / "baseline.zip"
    path.write_bytes(b"x")
    pin = BaselinePin.take(path)
    path.unlink()
    path.symlink_to("/dev/zero")  # not read: refused as a device, reported as changed
    (finding,) = pin.check()
    assert "character device" in str(finding.evidence["now"])
    assert baseline_digest(tmp_path / "missing").startswith("unreadable: ")


def test_a_surface_lost_while_guarding_is_a_finding() -> None:
    watch = SurfaceWatch()
    assert watch.update([("ebpf", Status.OK, ""), ("msr", Status.UNAVAILABLE, "no msr")]) == []
    lost = watch.update(
        [("ebpf", Status.UNAVAILABLE, "bpf(2): EPERM"), ("msr", Status.UNAVAILABLE, "no msr")]
    )
    assert [(f.technique, f.subject) for f in lost] == [("surface-lost", "ebpf")]
    assert "EPERM" in lost[0].summary and "surface-lost" in TECHNIQUES
    assert watch.update([("ebpf", Status.PARTIAL, "")]) == []


def test_the_unit_restarts_on_any_exit_within_a_start_limit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    assert unit["Service"]["Restart"] == "always"
    assert int(unit["Unit"]["StartLimitBurst"]) >= 1
    assert int(unit["Unit"]["StartLimitIntervalSec"]) > int(unit["Service"]["RestartSec"])


def test_the_code_pin_covers_bytecode_and_dependencies(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "mod.py").write_text("x = 1\n")
    cached = package / "__pycache__" / "mod.cpython-311.pyc"
    cached.write_bytes(b"\xa7\r\r\n" + b"\0" * 12 + b"code")
    pin = CodePin.take(package)
    assert any("cryptography" in p for p in pin.digests)  # a runtime dependency, by RECORD
    assert any(p.endswith(".pth") for p in pin.digests)
    assert pin.changed() == []
    cached.write_bytes(b"\xa7\r\r\n" + b"\0" * 12 + b"evil")  # the .py is untouched
    (package / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"new")
    assert pin.changed() == [str(package / "__pycache__" / n)
                             for n in ("mod.cpython-311.pyc", "other.cpython-311.pyc")]  # fmt: skip


def test_the_unit_runs_python_isolated() -> None:
    text = UNIT.read_text()
    for setting in ("PYTHONNOUSERSITE=1", "PYTHONSAFEPATH=1", "PYTHONDONTWRITEBYTECODE=1"):
        assert setting in text


def test_a_ledger_rebuilt_with_other_keys_is_critical(tmp_path: Path) -> None:
    from patchguard.guard.config import parse_config
    from patchguard.guard.tamper import ledger_root_changed
    from patchguard.policy.exceptions import init_ledger

    owner = HostKey.load_or_create(tmp_path / "owner.key")
    ledger = tmp_path / "ledger.db"
    init_ledger(ledger, owner, "Owner")
    pinned = parse_config(f'[guard]\nledger_root = "{owner.fingerprint()}"\n', tmp_path / "g")
    assert pinned.ledger_root is not None
    assert ledger_root_changed(ledger, pinned.ledger_root) == []
    ledger.unlink()
    init_ledger(ledger, HostKey.load_or_create(tmp_path / "rogue.key"), "Owner")  # verifies
    (finding,) = ledger_root_changed(ledger, pinned.ledger_root)
    assert finding.technique == "ledger-root-changed" and finding.severity.label == "critical"
