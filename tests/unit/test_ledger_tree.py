"""The log's stored tree (policy/transparency/store.py) and the append that uses it
(policy/ledger.py): after any mix of appends and entries inserted behind the log's back the
stored hashes are exactly a rebuild's; a log made by the code before the table gets it built
once at its next append; a kill -9 at any moment of an append leaves entries, tree and
checkpoints in step; `verify` catches a stored hash that is wrong; `load` replays on from
its cached head."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchguard.policy import ledger
from patchguard.policy.chain import seal
from patchguard.policy.exceptions import grant_key, init_ledger, set_max_expiry
from patchguard.policy.transparency import merkle, publish, store
from patchguard.policy.transparency.checkpoint import open_checkpoint
from patchguard.signing import HostKey

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ledger-before-tree"
KEYS = {name: HostKey.generate() for name in ("owner",)}


def stored(path: Path) -> dict[tuple[int, int], bytes]:
    conn = sqlite3.connect(path)
    try:
        return {(lv, ix): h for lv, ix, h in conn.execute("SELECT level, idx, hash FROM tree")}
    finally:
        conn.close()


def rebuilt(path: Path) -> merkle.MemoryTree:
    return store.tree_of(ledger.replay(ledger.read_rows(path)).entries)


def assert_in_step(path: Path) -> None:
    """Stored tree == a rebuild from the entries, and the latest checkpoint signs its root."""
    tree = rebuilt(path)
    hashes = stored(path)
    expected = {
        (level, index): tree.complete(level, index)
        for level in range(tree.size.bit_length())
        for index in range(tree.size >> level)
    }
    assert hashes == expected
    _rows, notes, config = ledger.read_log(path)
    assert config is not None and notes[-1][0] == tree.size
    checkpoint = open_checkpoint(notes[-1][1], config.verifier).checkpoint
    assert checkpoint.root == tree.root()
    assert ledger.verify(path).ok


def insert_behind(path: Path, key: HostKey, count: int) -> None:
    """Entries added without `append` (as an older patchguard, or a bulk import, would)."""
    head = ledger.load(path).entries[-1]
    previous = head.hash
    with ledger.locked(path) as (conn, _):
        for seq in range(head.seq + 1, head.seq + 1 + count):
            payload = {"policy": "max_expiry_days", "days": 1 + seq % 300}
            entry = seal(seq, head.when, "policy", key, None, payload, previous)
            ledger._insert(conn, entry)
            previous = entry.hash


def new_log(directory: Path, owner: HostKey) -> Path:
    path = directory / "ledger.db"
    init_ledger(path, owner, "Host Owner", now=T0)
    publish.init_log(path, "ledger.example.org/tree", directory / "log.key")
    return path


OPS = st.lists(st.one_of(st.just(0), st.integers(1, 20)), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(ops=OPS)
def test_the_stored_tree_is_a_rebuild_after_any_appends(ops: list[int]) -> None:
    # 0: one append; k > 0: k entries inserted behind the log's back, then one append.
    owner = KEYS["owner"]
    with tempfile.TemporaryDirectory() as work:
        path = new_log(Path(work), owner)
        for hour, op in enumerate(ops, 1):
            if op:
                insert_behind(path, owner, op)
            set_max_expiry(path, owner, hour, now=T0 + timedelta(hours=hour))
            assert_in_step(path)


def fixture_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "before"
    shutil.copytree(FIXTURE, work)
    for key in work.glob("*.key"):
        key.chmod(0o600)
    monkeypatch.setenv(store.LOG_KEY_ENV, str(work / "log.key"))
    return work


def table_names(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def test_a_log_made_before_the_stored_tree_gets_it_at_its_next_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = fixture_copy(tmp_path, monkeypatch)
    path = work / "ledger.db"
    assert "tree" not in table_names(path) and "entries_by_subject" not in table_names(path)
    assert ledger.verify(path).ok  # the older file reads as it did
    old = publish.load_log(path).latest.checkpoint
    assert old.size == 10
    owner = HostKey.load(work / "owner.key")
    set_max_expiry(path, owner, 60, now=T0 + timedelta(days=1))
    assert {"tree", "entries_by_subject", "entries_by_policy"} <= table_names(path)
    assert_in_step(path)
    before = len(stored(path))
    set_max_expiry(path, owner, 61, now=T0 + timedelta(days=1))
    assert len(stored(path)) - before == 3  # leaf 11 (0b1011) and the two subtrees it ends
    assert_in_step(path)
    new = publish.load_log(path)
    proof = new.tree.consistency_proof(old.size)
    merkle.verify_consistency(old.size, new.size, old.root, new.latest.checkpoint.root, proof)


def test_the_stored_tree_is_checked_by_verify_never_trusted(tmp_path: Path) -> None:
    owner = KEYS["owner"]
    path = new_log(tmp_path, owner)
    for hour in range(1, 6):
        set_max_expiry(path, owner, hour, now=T0 + timedelta(hours=hour))
    assert ledger.verify(path).ok
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER tree_no_update")
    conn.execute("UPDATE tree SET hash = zeroblob(32) WHERE level = 1 AND idx = 1")
    conn.close()
    bad = ledger.verify(path)
    assert not bad.ok and bad.reason == (
        "the stored tree hash 1 at level 1 does not match the entries"
    )


CHILD = """
import sys
from pathlib import Path
from patchguard.policy.exceptions import set_max_expiry
from patchguard.signing import HostKey
path, key = Path(sys.argv[1]), HostKey.load(Path(sys.argv[2]))
print("ready", flush=True)
for i in range(100000):
    set_max_expiry(path, key, 1 + i % 300)
"""


def test_kill_9_during_appends_leaves_entries_tree_and_checkpoints_in_step(
    tmp_path: Path,
) -> None:
    owner_path = tmp_path / "owner.key"
    owner = HostKey.load_or_create(owner_path)
    path = new_log(tmp_path, owner)
    rng = random.Random(7)
    grown = []
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(owner_path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.05, 0.5))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert_in_step(path)  # a half-done append is rolled back when the file is opened
        grown.append(len(ledger.read_rows(path)))
    assert grown[-1] > grown[0]  # the appends did run between the kills


def test_load_replays_on_from_its_cached_head(tmp_path: Path) -> None:
    owner = KEYS["owner"]
    path = tmp_path / "ledger.db"
    init_ledger(path, owner, "Host Owner", now=T0)
    reviewer = HostKey.generate()
    grant_key(path, owner, reviewer.public_key_bytes(), "Review Board", ["approve"], now=T0)
    first = ledger.load(path)
    for hour in range(1, 4):
        set_max_expiry(path, owner, hour, now=T0 + timedelta(hours=hour))
    later = ledger.load(path)
    full = ledger.replay(ledger.read_rows(path))
    assert later.entries == full.entries and later.descriptions == full.descriptions
    assert later.result == full.result and later.state == full.state
    assert len(first.entries) == 2 and first.state.max_expiry_days == 365  # not changed
