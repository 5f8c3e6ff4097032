"""The guard's ledger feed: every entry reaches the sinks once, in order, with its description;
due expiries are written down (signed by the host key) and announced; a ledger that does not
verify announces nothing. Real ledgers in a temporary directory, real keys."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from patchguard.guard.ledger_feed import LedgerFeed, read_seen, state_path
from patchguard.policy.exceptions import decide, grant_key, init_ledger, request_exception, revoke
from patchguard.policy.manifest import Manifest, parse_manifest
from patchguard.signing import HostKey

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
MANIFEST = b"""\
vendor = "Acme Security"
product = "acme-sensor"
version = "4.2.0"
contact = "security@acme.example"
justification = "EDR telemetry"

[[kprobe]]
symbol = "do_sys_openat2"
"""


def manifest() -> Manifest:
    return parse_manifest(MANIFEST, "acme.toml")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, HostKey]:
    return {n: HostKey.load_or_create(tmp_path / f"{n}.key") for n in ("owner", "acme", "reviewer")}


@pytest.fixture
def ledger(tmp_path: Path, keys: dict[str, HostKey]) -> Path:
    path = tmp_path / "ledger.db"
    init_ledger(path, keys["owner"], "Host Owner", now=T0)  # 1
    grant_key(path, keys["owner"], keys["acme"].public_key_bytes(), "Acme Security", [], now=T0)
    reviewer = keys["reviewer"].public_key_bytes()
    grant_key(path, keys["owner"], reviewer, "Review Board", ["approve"], now=T0)  # 3
    request_exception(path, keys["acme"], manifest(), date(2026, 3, 1), now=T0)  # 4
    decide(path, keys["reviewer"], 4, True, "reviewed", now=T0 + timedelta(hours=1))  # 5
    return path


def test_every_entry_is_announced_once_in_order(
    ledger: Path, tmp_path: Path, keys: dict[str, HostKey]
) -> None:
    feed = LedgerFeed(ledger, tmp_path / "host.key")
    events = feed.news(now=T0 + timedelta(days=1))
    assert [(e["seq"], e["kind"]) for e in events] == [
        (1, "policy"),
        (2, "policy"),
        (3, "policy"),
        (4, "request"),
        (5, "approve"),
    ]
    assert events[4]["message"].startswith("exception #4 approved for Acme Security")
    assert read_seen(state_path(ledger)) == 5
    assert not feed.changed()
    assert feed.news(now=T0 + timedelta(days=1)) == []
    revoke(ledger, keys["reviewer"], 4, "vendor asked", now=T0 + timedelta(days=2))
    assert feed.changed()
    again = LedgerFeed(ledger, tmp_path / "host.key")  # a restarted guard: state file kept
    assert [(e["seq"], e["kind"]) for e in again.news(now=T0 + timedelta(days=2))] == [
        (6, "revoke")
    ]


def test_due_expiry_is_written_down_by_the_host_and_announced(ledger: Path, tmp_path: Path) -> None:
    feed = LedgerFeed(ledger, tmp_path / "host.key")
    feed.news(now=T0 + timedelta(days=1))
    events = feed.news(now=datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC))
    assert [(e["seq"], e["kind"], e["subject"]) for e in events] == [(6, "expire", 4)]
    assert events[0]["actor"] == HostKey.load(tmp_path / "host.key").fingerprint()
    assert "expired" in events[0]["message"]


def test_with_a_corrupt_host_key_expiries_are_reported_once(ledger: Path, tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    feed = LedgerFeed(ledger, key)
    first = feed.news(now=T0)
    failed = [e for e in first if e["event"] == "ledger-expiry-failed"]
    assert len(failed) == 1 and str(key) in failed[0]["message"]
    assert len([e for e in first if e["event"] == "ledger-entry"]) == 5
    assert [e for e in feed.news(now=T0) if e["event"] == "ledger-expiry-failed"] == []


def test_tampered_ledger_announces_nothing(ledger: Path, tmp_path: Path) -> None:
    with sqlite3.connect(ledger) as conn:
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute('UPDATE entries SET payload = \'{"reason":"rubber stamp"}\' WHERE seq = 4')
    assert LedgerFeed(ledger, tmp_path / "host.key").news(now=T0) == []
    assert read_seen(state_path(ledger)) == 0


def test_a_rebuilt_ledger_is_announced_as_rewritten(
    ledger: Path, tmp_path: Path, keys: dict[str, HostKey]
) -> None:
    feed = LedgerFeed(ledger, tmp_path / "host.key")
    assert len(feed.news(now=T0)) == 5
    ledger.unlink()
    rogue = HostKey.load_or_create(tmp_path / "rogue.key")
    for seq in range(6):  # more entries than were announced: the old counter would hide them
        if seq == 0:
            init_ledger(ledger, rogue, "Not The Owner", now=T0)
        else:
            grant_key(ledger, rogue, keys["acme"].public_key_bytes(), f"Acme {seq}", [], now=T0)
    events = feed.news(now=T0)
    assert events[0]["event"] == "ledger-rewritten" and "rebuilt" in events[0]["message"]
    assert [e["seq"] for e in events[1:]] == [1, 2, 3, 4, 5, 6]  # the new history, all of it
    assert feed.news(now=T0) == []  # said once


def test_a_ledger_cut_short_or_removed_is_announced(ledger: Path, tmp_path: Path) -> None:
    feed = LedgerFeed(ledger, tmp_path / "host.key")
    feed.news(now=T0)
    ledger.unlink()
    (gone,) = feed.news(now=T0)
    assert gone["event"] == "ledger-rewritten" and "gone" in gone["message"]
    assert feed.news(now=T0) == []  # said once
    ledger.write_bytes(b"")  # a 0-byte file where the ledger was
    (empty,) = feed.news(now=T0)
    assert "fewer than the 5 already announced" in empty["message"]
