"""Fixtures for the fleet server tests: a real PostgreSQL started here (Debian's initdb and
pg_ctl, as the postgres user, socket in a temp dir), SQLite files, and the server itself as
a `patchguard server` process (fleet_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import PG_BIN, ServerProcess, new_pg_database, postgres_cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[Path]:
    """A PostgreSQL cluster for this test session: its socket directory."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"{PG_BIN}/initdb missing: run scripts/setup --dev (installs postgresql)")
    with postgres_cluster() as sock:
        yield sock


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    sock: Path = request.getfixturevalue("postgres")
    return new_pg_database(sock)


@pytest.fixture
def pg_url(postgres: Path) -> str:
    return new_pg_database(postgres)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Every server a test starts (append it here) is stopped after the test."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def server(db_url: str, tmp_path: Path, servers: list[ServerProcess]) -> ServerProcess:
    process = ServerProcess(db_url, tmp_path).start()
    servers.append(process)
    return process
