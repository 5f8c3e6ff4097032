"""The pages' chain replay (ChainVerifier) on a real database: a big backlog replayed in the
background while pages go on, new entries replayed as they come, a rewritten head or a
shortened ledger starting the replay again, and a bad entry stopping it with its reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, update
from sqlalchemy.orm import Session, sessionmaker
from support.synthetic_ledger import Builder, build, manifest_for, store

from patchguard.server.db import LedgerEntry, engine, session_factory, transaction
from patchguard.server.migrate import migrate
from patchguard.server.pages.ledger_view import ChainVerifier
from patchguard.server.pages.views import ChainStatus


@pytest.fixture
def bound(db_url: str) -> Iterator[Engine]:
    made = engine(db_url)
    migrate(made)
    yield made
    made.dispose()


def _stored(factory: sessionmaker[Session], built: Builder, start: int = 0) -> None:
    with transaction(factory) as session:
        store(session, built.rows()[start:])


def _settled(verifier: ChainVerifier, seconds: float = 60) -> ChainStatus:
    deadline = time.monotonic() + seconds
    while True:
        status = verifier.refresh()
        if status.progress is None:
            return status
        assert time.monotonic() < deadline, f"the replay did not finish: {status}"
        time.sleep(0.05)


def test_a_big_backlog_is_replayed_in_the_background(bound: Engine, tmp_path: Path) -> None:
    factory = session_factory(bound)
    built = build(tmp_path, 300)
    _stored(factory, built)
    verifier = ChainVerifier(factory, inline_limit=50)
    first = verifier.refresh()
    assert first.entries == 300 and first.verified == 0 and first.progress is not None
    assert verifier.verdict(300).text.startswith("not yet replayed")
    done = _settled(verifier)
    assert (done.verified, done.problem, done.head) == (300, None, built.entries[-1].hash)
    assert done.complete
    assert "belongs to Review Board" in (verifier.description(2) or "")


def test_new_entries_are_replayed_while_the_page_waits(bound: Engine, tmp_path: Path) -> None:
    factory = session_factory(bound)
    built = build(tmp_path, 40)
    _stored(factory, built)
    verifier = ChainVerifier(factory)
    assert verifier.refresh().verified == 40
    grown = Builder(tmp_path, list(built.entries), built.state, built.clock)
    board = grown.key("board")
    request = grown.request(grown.key("vendor0"), manifest_for("Acme Security"))
    grown.clock += timedelta(hours=2)
    grown.decide(board, request, approve=True, reason="late review")
    _stored(factory, grown, start=40)
    status = verifier.refresh()
    assert (status.verified, status.progress) == (42, None)
    fair = {v.vendor: v for v in verifier.fairness(built.clock).vendors}
    assert fair["Acme Security"].worst_to_decision == "2h 0m"


def test_a_rewritten_head_or_a_shorter_ledger_starts_again(bound: Engine, tmp_path: Path) -> None:
    factory = session_factory(bound)
    built = build(tmp_path, 30)
    _stored(factory, built)
    verifier = ChainVerifier(factory)
    assert verifier.refresh().complete
    with transaction(factory) as session:
        session.execute(delete(LedgerEntry).where(LedgerEntry.seq == 30))
    status = verifier.refresh()
    assert (status.entries, status.verified, status.problem) == (29, 29, None)
    with transaction(factory) as session:
        forged = update(LedgerEntry).where(LedgerEntry.seq == 29).values(signature="00" * 64)
        session.execute(forged)
    status = verifier.refresh()
    assert status.verified == 28
    actor = built.entries[28].actor
    assert status.problem == f"entry 29: signature does not verify for actor {actor}"
    assert not verifier.verdict(29).ok and verifier.verdict(28).ok
