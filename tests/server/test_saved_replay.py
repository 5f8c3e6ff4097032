"""The ledger replay saved, signed, in the database (pages/signed_replay.py), on SQLite and
PostgreSQL: a second verifier (another server process's) resumes from it and replays only the
entries after it; a saved replay that was altered, signed by another key, or whose head row
changed is not used; a row changed below the saved head is found by the row comparison; and
a verifier closed in the middle of a replay stops quietly. Then the same with two real
`patchguard server` processes, one after the other, on one database."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fleet_support import ServerProcess
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from support.synthetic_ledger import Builder, build, manifest_for, store

from patchguard.server.db import LedgerEntry, LedgerReplay, engine, session_factory, transaction
from patchguard.server.migrate import migrate
from patchguard.server.pages.ledger_view import ChainVerifier
from patchguard.server.pages.views import ChainStatus
from patchguard.signing import HostKey

INLINE = 20  # a backlog over this is replayed in the background, and resumed from a saved one


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    made: Engine = engine(db_url)
    migrate(made)
    yield session_factory(made)
    made.dispose()


@pytest.fixture
def built(factory: sessionmaker[Session], tmp_path: Path) -> Builder:
    ledger = build(tmp_path / "keys", 120)
    with transaction(factory) as session:
        store(session, ledger.rows())
    return ledger


def _settled(verifier: ChainVerifier, seconds: float = 120) -> ChainStatus:
    deadline = time.monotonic() + seconds
    while True:
        status = verifier.refresh()
        if status.progress is None:
            return status
        assert time.monotonic() < deadline, f"the replay did not finish: {status}"
        time.sleep(0.05)


def _verifier(factory: sessionmaker[Session], key: HostKey, **options: object) -> ChainVerifier:
    return ChainVerifier(factory, key, inline_limit=INLINE, **options)  # type: ignore[arg-type]


def _saved_heads(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(LedgerReplay.seq).order_by(LedgerReplay.seq)))


def _grow(factory: sessionmaker[Session], built: Builder, tmp_path: Path, requests: int) -> None:
    grown = Builder(tmp_path / "keys", list(built.entries), built.state, built.clock)
    start = len(grown.entries)
    for n in range(requests):
        grown.clock += timedelta(minutes=5)
        grown.request(grown.key("vendor0"), manifest_for(f"Late Vendor {n}"))
    with transaction(factory) as session:
        store(session, grown.rows()[start:])


def test_a_second_process_replays_only_what_was_added(
    factory: sessionmaker[Session], built: Builder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = HostKey.generate()
    first = _verifier(factory, key)
    done = _settled(first)
    assert (done.verified, done.problem) == (120, None)
    assert _saved_heads(factory) == [120]
    _grow(factory, built, tmp_path, requests=25)
    caplog.set_level(logging.INFO, "patchguard.server.pages")
    second = _verifier(factory, key)
    status = _settled(second)
    assert (status.entries, status.verified, status.problem) == (145, 145, None)
    assert "ledger replay resumed at entry 120 (saved, signed): 25 entries to replay" in caplog.text
    assert second.description(2) == first.description(2)
    assert "Late Vendor 24" in (second.description(145) or "")
    assert status.started == done.started  # the replay it continues began in the first process
    assert _saved_heads(factory) == [120, 145]


@pytest.mark.parametrize("change", ["signature", "derived", "key"])
def test_a_saved_replay_not_signed_by_this_server_is_not_used(
    factory: sessionmaker[Session], built: Builder, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = HostKey.generate()
    assert _settled(_verifier(factory, key)).verified == 120
    changes: dict[str, dict[str, object]] = {
        "signature": {"signature": "00" * 64},
        "derived": {"derived": b"not the bytes that were signed"},
    }
    altered = changes.get(change, {})
    if altered:
        with transaction(factory) as session:
            session.execute(update(LedgerReplay).values(**altered))
    caplog.set_level(logging.INFO, "patchguard.server.pages")
    other = HostKey.generate() if change == "key" else key
    status = _settled(_verifier(factory, other))
    assert (status.verified, status.problem) == (120, None)  # replayed from entry 1
    assert "resumed" not in caplog.text
    reason = "signed by another key" if change == "key" else "its signature does not verify"
    assert f"saved ledger replay at entry 120 not used, {reason}" in caplog.text


def test_a_row_changed_below_the_saved_head_is_found(
    factory: sessionmaker[Session], built: Builder, caplog: pytest.LogCaptureFixture
) -> None:
    key = HostKey.generate()
    assert _settled(_verifier(factory, key)).verified == 120
    with transaction(factory) as session:  # a row the head check does not read
        forged = update(LedgerEntry).where(LedgerEntry.seq == 40).values(signature="00" * 64)
        session.execute(forged)
    caplog.set_level(logging.INFO, "patchguard.server.pages")
    time.sleep(1)  # the saved replay's rows were compared over a second ago
    second = _verifier(factory, key, reverify=timedelta(seconds=1))
    _settled(second)
    assert "resumed at entry 120" in caplog.text
    status = _settled(second)  # the comparison is due: it runs, then a replay from entry 1
    actor = built.entries[39].actor
    assert status.problem == f"entry 40: signature does not verify for actor {actor}"
    assert status.verified == 39
    assert "ledger rows 1-120 changed since replayed: replaying from 1" in caplog.text


def test_a_changed_head_row_is_not_resumed_from(
    factory: sessionmaker[Session], built: Builder, caplog: pytest.LogCaptureFixture
) -> None:
    key = HostKey.generate()
    assert _settled(_verifier(factory, key)).verified == 120
    with transaction(factory) as session:
        forged = update(LedgerEntry).where(LedgerEntry.seq == 120).values(time="2020-01-01")
        session.execute(forged)
    caplog.set_level(logging.INFO, "patchguard.server.pages")
    status = _settled(_verifier(factory, key))
    assert "saved ledger replay at entry 120: that entry changed since" in caplog.text
    assert status.verified == 119 and status.problem is not None


def test_closing_stops_a_background_replay_quietly(
    factory: sessionmaker[Session], built: Builder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "patchguard.server.pages")
    verifier = ChainVerifier(factory, inline_limit=INLINE)
    real_fetch = verifier._fetch

    def fetch_after_close(low: int, high: int) -> list[tuple[object, ...]]:
        # a read still under way when the server starts to shut down: it ends at the next one
        assert verifier._stopping.wait(30)
        return real_fetch(low, high)

    verifier._fetch = fetch_after_close  # type: ignore[method-assign]
    assert verifier.refresh().progress is not None
    verifier.close(timeout=30)
    status = verifier.refresh()
    assert status.progress is None and status.verified == 0  # the replay in use stayed
    assert "ledger replay stopped: the server is shutting down" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(LedgerReplay)) == 0


def _page_says(server: ServerProcess, text: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with urllib.request.urlopen(f"{server.url}/", timeout=30) as answer:
            if text in answer.read().decode():
                return
        assert time.monotonic() < deadline, f"the public page never said {text!r}"
        time.sleep(0.2)


def test_two_server_processes_on_one_database_share_the_saved_replay(
    db_url: str, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    bound = engine(db_url)
    migrate(bound)
    factory = session_factory(bound)
    big = build(tmp_path / "keys", 2100)  # over the 2000 a page replays while it waits
    with transaction(factory) as session:
        store(session, big.rows())
    first = ServerProcess(db_url, tmp_path).start()
    servers.append(first)
    _page_says(first, "All 2100 entries verify")
    assert _saved_heads(factory) == [2100]  # saved before it was put in use
    first.stop()
    _grow(factory, big, tmp_path, requests=5)
    bound.dispose()
    second = ServerProcess(db_url, tmp_path).start()  # the same key file: the same server
    servers.append(second)
    _page_says(second, "All 2105 entries verify")
    second.stop()
    first_log, second_log = first.log.read_text(), second.log.read_text()
    assert "resumed" not in first_log
    assert "ledger replay resumed at entry 2100 (saved, signed): 5 entries to replay" in second_log
    for log in (first_log, second_log):  # each shut down without an alarming line
        assert not [line for line in log.splitlines() if " ERROR " in line], log
