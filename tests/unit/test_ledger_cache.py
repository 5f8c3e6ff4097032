"""The verified replay of a ledger is kept by its head: asked again with the head unchanged,
`load` returns it without replaying; any append, or another file, replays."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from patchguard.policy.exceptions import init_ledger, set_max_expiry
from patchguard.policy.ledger import LedgerError, head_of, load, verify
from patchguard.signing import HostKey

T0 = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> tuple[Path, HostKey]:
    key = HostKey.load_or_create(tmp_path / "owner.key")
    path = tmp_path / "ledger.db"
    init_ledger(path, key, "Owner", now=T0)
    set_max_expiry(path, key, 90, now=T0)
    return path, key


def test_an_unchanged_head_is_not_replayed(ledger: tuple[Path, HostKey]) -> None:
    path, _ = ledger
    first = load(path)
    assert load(path) is first  # the same object: nothing was read or verified again
    assert head_of(path) == (*head_of(path)[:2], 2, first.entries[-1].hash)  # type: ignore[index]


def test_an_append_replays(ledger: tuple[Path, HostKey]) -> None:
    path, key = ledger
    first = load(path)
    set_max_expiry(path, key, 30, now=T0 + timedelta(hours=1))
    again = load(path)
    assert again is not first and len(again.entries) == 3


def test_a_replaced_file_replays(ledger: tuple[Path, HostKey], tmp_path: Path) -> None:
    path, key = ledger
    first = load(path)
    other = tmp_path / "other.db"
    init_ledger(other, key, "Owner", now=T0)
    set_max_expiry(other, key, 90, now=T0)
    other.replace(path)  # same entries, same head hash, another file
    assert load(path) is not first


def test_a_ledger_that_stops_verifying_is_refused_and_forgotten(
    ledger: tuple[Path, HostKey],
) -> None:
    path, key = ledger
    load(path)
    set_max_expiry(path, key, 30, now=T0 + timedelta(hours=1))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET payload = '{}' WHERE seq = 3")  # the new head is bad
    conn.close()
    with pytest.raises(LedgerError, match="does not verify"):
        load(path)
    assert not verify(path).ok


def test_a_reader_waits_for_a_held_lock_only_as_long_as_it_is_told(
    ledger: tuple[Path, HostKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's write lock: the guard's setting (a short wait) gives a LedgerError
    it reports, where SQLite's default would hold the sweep for 30 s."""
    from patchguard.policy import ledger as module

    path, _ = ledger
    monkeypatch.setattr(module, "READ_LOCK_WAIT", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(LedgerError, match="locked"):
            module.read_rows(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(module.read_rows(path)) == 2
