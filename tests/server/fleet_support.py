"""Helpers for the fleet server tests: the server as a child process, databases, tokens,
hosts with real keys and state directories, and raw HTTP calls."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select

from patchguard.fleet import client
from patchguard.server.auth import create_token
from patchguard.server.db import Base, engine, session_factory, transaction, utcnow
from patchguard.server.migrate import migrate
from patchguard.signing import HostKey


def _pg_bin() -> Path:
    """Debian's newest installed PostgreSQL (15 on Debian 12, 17 on Debian 13)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
PG_USER = "postgres"  # PostgreSQL refuses to run as root


def as_pg(*argv: str) -> None:
    command = ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else list(argv)
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Path]:
    """A throwaway PostgreSQL cluster: its socket directory. Not under pytest's tmp_path,
    which is root's alone: the postgres user must reach it."""
    base = Path(tempfile.mkdtemp(prefix="patchguard-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER)
        shutil.chown(sock, PG_USER)
    try:
        as_pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        options = f"-k {sock} -c listen_addresses='' -c max_connections=200"
        log = str(base / "pg.log")
        as_pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w", "start")
        try:
            yield sock
        finally:
            as_pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def new_pg_database(sock: Path) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"host={sock} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@/{name}?host={sock}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """`patchguard server` as a child process; start, stop, or kill -9 it."""

    db_url: str
    workdir: Path
    missed: int = 3
    silence_check: float = 0.3
    workers: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        for _ in range(5):  # another test on this machine may take the free port first
            if self._start_once():
                return self
            self.port = free_port()
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    def _start_once(self) -> bool:
        argv = [sys.executable, "-m", "patchguard.cli", "server", "--db", self.db_url]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--key", str(self.workdir / "server.key")]
        argv += ["--missed-heartbeats", str(self.missed)]
        argv += ["--silence-check", str(self.silence_check), "--workers", str(self.workers)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # a loaded 2-core machine starts it slowly
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self.log.read_text():
                    return False
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=1).close()
                return True
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def make_token(db_url: str, role: str, **limits: object) -> str:
    bound = engine(db_url)
    try:
        migrate(bound)
        with transaction(session_factory(bound)) as session:
            return create_token(session, role, utcnow(), **limits)  # type: ignore[arg-type]
    finally:
        bound.dispose()


@dataclass
class HostSide:
    """A host as the fleet code sees it: its key and its state directory."""

    key: HostKey
    directory: Path

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint()


def new_host(tmp_path: Path, name: str = "host") -> HostSide:
    directory = tmp_path / name
    directory.mkdir(parents=True)
    return HostSide(HostKey.load_or_create(directory / "host.key"), directory / "state")


def enrolled_host(server: ServerProcess, tmp_path: Path, name: str = "host") -> HostSide:
    host = new_host(tmp_path, name)
    token = make_token(server.db_url, "enrol")
    client.enrol(server.url, token, host.key, name, host.directory)
    return host


def call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One raw HTTP call: (status, JSON answer)."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")


def operator(url: str, token: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return call(url, body, headers)


def count(db_url: str, model: type[Base]) -> int:
    bound = engine(db_url)
    try:
        with session_factory(bound)() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0
    finally:
        bound.dispose()
