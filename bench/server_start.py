"""What a fleet server process's start costs in ledger replay, with and without a saved one.

--entries ledger entries (100,000; real keys and signatures) are stored in a fresh database
(SQLite, or a throwaway PostgreSQL with --db postgresql). Then, in one run:

1. before: a process with no saved replay replays the ledger from entry 1 (what every
   process did at start before replays were saved);
2. the same replay by a process holding the server key, which then saves it, signed;
3. after: --added more entries are appended and a new process starts from the saved replay.

Printed: wall and CPU seconds until each has verified every stored entry (the replay runs
in a background thread; the page is served meanwhile), the ratio before/after, and the cost
of the row comparison every process makes every 10 minutes (all rows read and digested). CPU
is this process's, which runs nothing else; the load average says how busy the machine was.

  .venv/bin/python bench/server_start.py [--entries 100000] [--added 100] [--db sqlite]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fleet_support import new_pg_database, postgres_cluster
from sqlalchemy.orm import Session, sessionmaker
from support.synthetic_ledger import Builder, build, manifest_for, store

from patchguard.server.db import engine, session_factory, transaction
from patchguard.server.migrate import migrate
from patchguard.server.pages import signed_replay
from patchguard.server.pages.ledger_view import CHUNK, ChainVerifier, select_rows
from patchguard.signing import HostKey


def replayed(factory: sessionmaker[Session], key: HostKey | None) -> tuple[float, float, int]:
    """Wall and CPU seconds until a new verifier has verified every stored entry."""
    verifier = ChainVerifier(factory, key)
    wall, cpu = time.perf_counter(), time.process_time()
    while (status := verifier.refresh()).progress is not None or not status.complete:
        if status.problem is not None:
            raise SystemExit(f"the ledger does not verify: {status.problem}")
        time.sleep(0.01)
    verifier.close()
    return time.perf_counter() - wall, time.process_time() - cpu, status.verified


def compared(factory: sessionmaker[Session], last: int) -> tuple[float, float]:
    """The row comparison: every row read and digested, as ChainVerifier does it."""
    wall, cpu = time.perf_counter(), time.process_time()
    digest = b""
    for low in range(1, last + 1, CHUNK):
        with factory() as session:
            for row in select_rows(session, low, min(last, low + CHUNK - 1)):
                digest = signed_replay.row_digest(digest, row)
    return time.perf_counter() - wall, time.process_time() - cpu


def grown(ledger: Builder, keys: Path, added: int) -> list[tuple[object, ...]]:
    more = Builder(keys, list(ledger.entries), ledger.state, ledger.clock)
    start = len(more.entries)
    for n in range(added):
        more.clock += timedelta(minutes=5)
        more.request(more.key("vendor0"), manifest_for(f"Vendor {n}"))
    return more.rows()[start:]


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'start.db'}"
        return
    with postgres_cluster() as sock:
        yield new_pg_database(sock)


def line(label: str, wall: float, cpu: float, entries: int) -> str:
    load = os.getloadavg()[0]
    return f"{label:44s} {wall:7.2f} s wall, {cpu:7.2f} s CPU, {entries} entries (load {load:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--added", type=int, default=100, help="entries appended before 'after'")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.db, Path(tmp)) as url:
        keys = Path(tmp) / "keys"
        ledger = build(keys, args.entries)
        bound = engine(url)
        migrate(bound)
        factory = session_factory(bound)
        with transaction(factory) as session:
            store(session, ledger.rows())
        key = HostKey.generate()
        before = replayed(factory, None)
        print(line(f"{args.db}: before, from entry 1", *before), flush=True)
        print(line("from entry 1, then saved", *replayed(factory, key)), flush=True)
        with transaction(factory) as session:
            store(session, grown(ledger, keys, args.added))
        after = replayed(factory, key)
        print(line(f"after, from the saved replay (+{args.added} new)", *after), flush=True)
        ratio = before[1] / after[1] if after[1] else float("inf")
        print(f"start CPU before/after: {ratio:.1f}x", flush=True)
        print(line("row comparison (every 10 minutes)", *compared(factory, after[2]), after[2]))
        bound.dispose()


if __name__ == "__main__":
    main()
