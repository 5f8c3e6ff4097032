"""The guard's signed memory: the ledger head it accepted (a ledger cut short, emptied,
removed or rebuilt is critical; a longer one that extends it is pinned anew), a state file
that does not verify, baseline rotation requests, stop requests; `ledger verify` of an empty
ledger; the ledger's open path refusing what is not a regular file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from patchguard.guard import state as guard_state
from patchguard.guard import stops
from patchguard.guard.config import ConfigError, GuardConfig, parse_config
from patchguard.guard.pins import GuardMemory, Rotation, read_rotation, write_rotation
from patchguard.guard.tamper import BaselinePin
from patchguard.policy import exceptions as ops
from patchguard.policy.ledger import LedgerError, read_rows
from patchguard.signing import HostKey

Events = list[dict[str, Any]]


def memory(tmp: Path, events: Events, **config: Any) -> GuardMemory:
    settings = {"key": tmp / "host.key", "spool": tmp / "spool", "baseline": None, **config}
    return GuardMemory(GuardConfig(**settings), events.append)


def ledger_of(tmp: Path, key_name: str = "owner.key") -> Path:
    ledger = tmp / "ledger.db"
    owner = HostKey.load_or_create(tmp / key_name)
    ops.init_ledger(ledger, owner, "SRE team")
    ops.set_max_expiry(ledger, owner, 90)
    return ledger


@pytest.fixture
def pinned(tmp_path: Path) -> tuple[GuardMemory, Path]:
    HostKey.load_or_create(tmp_path / "host.key")
    ledger = ledger_of(tmp_path)
    mem = memory(tmp_path, [], ledger=ledger)
    mem.start(None)
    assert mem.ledger_check() == []  # accepted, and its head pinned in the signed state
    assert mem.pinned_head() is not None and mem.pinned_head()[0] == 2  # type: ignore[index]
    return mem, ledger


def techniques(mem: GuardMemory) -> list[tuple[str, str]]:
    return [(f.technique, f.severity.label) for f in mem.ledger_check()]


def test_a_ledger_that_extends_the_head_is_pinned_anew(pinned: tuple[GuardMemory, Path]) -> None:
    mem, ledger = pinned
    ops.set_max_expiry(ledger, HostKey.load(ledger.parent / "owner.key"), 30)
    assert mem.ledger_check() == []
    again = memory(ledger.parent, [], ledger=ledger)  # a restart reads the pin back
    assert again.pinned_head() == mem.pinned_head() and again.pinned_head()[0] == 3  # type: ignore[index]


@pytest.mark.parametrize("how", ["zero bytes", "removed", "rebuilt with other keys", "cut short"])
def test_a_ledger_that_does_not_extend_the_head_is_critical(
    pinned: tuple[GuardMemory, Path], how: str
) -> None:
    mem, ledger = pinned
    if how == "zero bytes":
        ledger.write_bytes(b"")
    elif how == "removed":
        ledger.unlink()
    elif how == "rebuilt with other keys":
        ledger.unlink()
        ledger_of(ledger.parent, "rogue.key")  # verifies by itself, 2 entries again
    else:
        ledger.unlink()
        ops.init_ledger(ledger, HostKey.load(ledger.parent / "owner.key"), "SRE team")
    assert techniques(mem) == [("ledger-head-lost", "critical")]
    # and it stays so: the pin is not moved to the new ledger
    assert techniques(mem) == [("ledger-head-lost", "critical")]


def test_a_ledger_locked_by_another_process_is_a_finding(
    pinned: tuple[GuardMemory, Path],
) -> None:
    from patchguard.policy import ledger as ledger_module

    mem, ledger = pinned
    holder = sqlite3.connect(ledger, isolation_level=None)
    wait, ledger_module.READ_LOCK_WAIT = ledger_module.READ_LOCK_WAIT, 0.1
    try:
        holder.execute("BEGIN EXCLUSIVE")
        ledger_module._REPLAYS.clear()  # nothing cached: the ledger must be read
        assert techniques(mem) == [("ledger-locked", "high")]
    finally:
        ledger_module.READ_LOCK_WAIT = wait
        holder.close()


def test_the_config_pins_a_head_before_the_guard_has_one(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path)
    head = read_rows(ledger)[-1]
    text = f'[guard]\nledger_head = "2:{head[8]}"\n'
    assert parse_config(text, tmp_path / "g.toml").ledger_head == (2, head[8])
    with pytest.raises(ConfigError, match=r"guard.ledger_head: expected SEQ:HASH"):
        parse_config('[guard]\nledger_head = "2:xyz"\n', tmp_path / "g.toml")
    mem = memory(tmp_path, [], ledger=ledger, ledger_head=(3, "0" * 64))  # not there
    assert techniques(mem) == [("ledger-head-lost", "critical")]
    mem = memory(tmp_path, [], ledger=ledger, ledger_head=(2, str(head[8])))
    assert techniques(mem) == []


def test_a_forged_state_is_critical_and_not_believed(tmp_path: Path) -> None:
    HostKey.load_or_create(tmp_path / "host.key")
    rogue = HostKey.load_or_create(tmp_path / "rogue.key")
    path = tmp_path / guard_state.NAME
    guard_state.save(path, guard_state.GuardState(baseline_sha256="ab" * 32), rogue)
    mem = memory(tmp_path, [])
    assert mem.state.baseline_sha256 is None  # the forger's pin is not taken
    (finding,) = mem.start(None)
    assert finding.technique == "guard-state-untrusted" and "not signed by" in finding.summary


def test_a_baseline_rotation_is_taken_only_as_requested(tmp_path: Path) -> None:
    key = HostKey.load_or_create(tmp_path / "host.key")
    baseline = tmp_path / "baseline.zip"
    baseline.write_bytes(b"first")
    mem = memory(tmp_path, [], baseline=baseline)
    pin = mem.baseline_pin()
    assert pin is not None
    mem.start(pin)
    baseline.write_bytes(b"second")
    now = BaselinePin.take(baseline).digest
    assert mem.rotation_for(pin, now) is None  # no request
    rogue = HostKey.load_or_create(tmp_path / "rogue.key")
    request = Rotation(str(baseline), pin.digest, now, "kernel 6.9", 0.0)
    write_rotation(tmp_path, request, rogue)
    assert mem.rotation_for(pin, now) is None  # signed by another key
    write_rotation(tmp_path, Rotation(str(baseline), "0" * 64, now, "x", 0.0), key)
    assert mem.rotation_for(pin, now) is None  # from another baseline than the one pinned
    write_rotation(tmp_path, request, key)
    os.chmod(tmp_path / "baseline-rotation.json", 0o666)
    assert read_rotation(tmp_path, key.public_key_bytes()) is None  # writable by anyone
    os.chmod(tmp_path / "baseline-rotation.json", 0o600)
    taken = mem.rotation_for(pin, now)
    assert taken is not None and taken.reason == "kernel 6.9"
    assert not (tmp_path / "baseline-rotation.json").exists()  # used up
    assert memory(tmp_path, [], baseline=baseline).baseline_pin() == BaselinePin(baseline, now)


def test_a_stop_request_names_the_pid_and_is_used_once(tmp_path: Path) -> None:
    stops.write_request(tmp_path, 4242)
    assert stops.take_request(tmp_path, 1) is False  # another pid, and used up
    stops.write_request(tmp_path, 4242)
    assert stops.take_request(tmp_path, 4242) is True
    assert stops.take_request(tmp_path, 4242) is False


def test_the_unit_asks_for_its_stops() -> None:
    unit = (Path(__file__).parents[2] / "src/patchguard/guard/patchguard-guard.service").read_text()
    assert "ExecStop=@PATCHGUARD@ guard --config /etc/patchguard/guard.toml " in unit
    assert "--stop-requested $MAINPID" in unit


def _verify(ledger: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "patchguard.cli", "ledger", "verify", "--ledger", str(ledger)]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, check=False)


def test_ledger_verify_says_an_empty_ledger_is_empty(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    ledger.write_bytes(b"")
    empty = _verify(ledger)
    assert empty.returncode == 1 and "0 entries verify" not in empty.stdout
    assert empty.stderr == (
        f"patchguard: {ledger}: the ledger is empty (0 bytes): nothing verifies; "
        "pass --new only for a ledger meant to be new\n"
    )
    new = _verify(ledger, "--new")
    assert new.returncode == 0 and "empty, as a new ledger" in new.stdout
    ledger.unlink()
    full = _verify(ledger_of(tmp_path))
    assert full.returncode == 0 and "2 entries verify; head " in full.stdout


def test_the_ledger_open_refuses_a_fifo_and_a_device_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "ledger.db"
    os.mkfifo(fifo)
    with pytest.raises(LedgerError, match="a FIFO, not a regular file"):
        read_rows(fifo)
    link = tmp_path / "dev.db"
    link.symlink_to("/dev/zero")  # a link is followed, and what it names is checked
    with pytest.raises(LedgerError, match="a character device, not a regular file"):
        read_rows(link)
