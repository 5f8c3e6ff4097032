"""Fixtures for the fleet server tests: a real PostgreSQL started here (Debian's initdb and
pg_ctl, as the postgres user, socket in a temp dir), SQLite files, and the server itself as
a `patchguard server` process (fleet_support.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import PG_BIN, PG_USER, ServerProcess, as_pg, new_pg_database


@pytest.fixture(scope="session")
def postgres() -> Iterator[Path]:
    """A PostgreSQL cluster for this test session: its socket directory. Not under pytest's
    tmp_path, which is root's alone: the postgres user must reach it."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"{PG_BIN}/initdb missing: run scripts/setup --dev (installs postgresql)")
    base = Path(tempfile.mkdtemp(prefix="patchguard-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER)
        shutil.chown(sock, PG_USER)
    as_pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
    options = f"-k {sock} -c listen_addresses='' -c max_connections=200"
    log = base / "pg.log"
    as_pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        yield sock
    finally:
        as_pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


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
