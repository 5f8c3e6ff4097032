"""Where the fleet server's CPU per report goes, part by part, measured in one process.

The same signed reports as bench/server.py (real ed25519 keys, ten findings, about 6 KB)
are taken apart in the order the server takes them: the envelope's JSON and pydantic
validation, the body's JSON, the canonical-form check, the body's validation, the signature,
`check` as a whole; then `store` in one transaction on a real database (statements counted),
the Server-Timing bookkeeping on its own, and the whole route driven through the ASGI app
(FastAPI, Starlette, the thread pool) without a socket. Each part runs over every report in
a loop and is timed by the process's CPU clock, so the numbers are ms of CPU per report and
do not depend on what else the machine runs (the load average is printed beside them).
What uvicorn and HTTP parsing add is the difference to bench/server.py's server CPU.

Run as root (PostgreSQL runs as the postgres user):
  .venv/bin/python bench/server_cpu.py [--hosts 500] [--reports 2] [--db postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
from fleet_support import new_pg_database, postgres_cluster
from server import signed_reports

from patchguard.policy.chain import canonical
from patchguard.server.app import Settings, Timing, create_app, make_server
from patchguard.server.db import Host, engine, session_factory, transaction, utcnow
from patchguard.server.ingest import Checked, Stored, check, store
from patchguard.server.migrate import migrate
from patchguard.server.schemas import Body, Envelope
from patchguard.signing import HostKey, verify_signature


def per_report(label: str, count: int, run: Callable[[], object], repeat: int = 1) -> float:
    """Run `run` (it loops over every report) `repeat` times and print the least CPU per
    report in ms: the first pass over a part also pays for warming caches."""
    spent = []
    for _ in range(repeat):
        t0 = time.process_time()
        run()
        spent.append(time.process_time() - t0)
    ms = min(spent) * 1000 / count
    print(f"  {label:44s} {ms:6.3f} ms", flush=True)
    return ms


def enrolled(url: str, keys: list[HostKey]) -> None:
    """The hosts' rows, as an enrolment writes them (the route is not what is measured)."""
    bound = engine(url)
    migrate(bound)
    now = utcnow()
    with transaction(session_factory(bound)) as session:
        for n, key in enumerate(keys):
            public = key.public_key_bytes().hex()
            session.add(
                Host(
                    name=f"host-{n:04d}",
                    public_key=public,
                    fingerprint=key.fingerprint(),
                    enrolled_at=now,
                    last_seq=0,
                    status="active",
                )
            )
    bound.dispose()


def parsing(raws: list[bytes], keys: dict[str, str]) -> list[Checked]:
    """The parts of `check`, each over every report (three times: the least), then `check`."""
    n = len(raws)
    envelopes = [parse_env(raw) for raw in raws]
    datas = [json.loads(e.body) for e in envelopes]
    per_report("envelope: JSON + pydantic", n, lambda: [parse_env(raw) for raw in raws], 3)
    per_report("body: json.loads", n, lambda: [json.loads(e.body) for e in envelopes], 3)
    per_report("body: canonical form re-encoded", n, lambda: [canonical(d) for d in datas], 3)
    per_report("body: pydantic validation", n, lambda: [Body.model_validate(d) for d in datas], 3)
    signed = [
        (bytes.fromhex(keys[d["host"]]), e.body.encode("ascii"), bytes.fromhex(e.signature))
        for d, e in zip(datas, envelopes, strict=True)
    ]
    per_report("ed25519 verify", n, lambda: [verify_signature(*one) for one in signed], 3)
    per_report("check() whole, key known", n, lambda: [check(raw, keys.get) for raw in raws], 3)
    return [check(raw, keys.get) for raw in raws]


def parse_env(raw: bytes) -> Envelope:
    return Envelope.model_validate_json(raw)


@contextlib.contextmanager
def counted(bound: Engine) -> Iterator[list[int]]:
    """Statements sent to the database while the block runs."""
    count = [0]

    def one(*_args: object) -> None:
        count[0] += 1

    event.listen(bound, "before_cursor_execute", one)
    try:
        yield count
    finally:
        event.remove(bound, "before_cursor_execute", one)


def stored(checked: Checked, connection: Connection, now: datetime) -> Stored:
    return store(connection, checked, now)


def storing(url: str, workdir: Path, checked: list[Checked]) -> None:
    server = make_server(Settings(db_url=url, key_path=workdir / "server.key"))
    half = len(checked) // 2

    def each(some: list[Checked], timing: bool) -> None:
        for one in some:
            server.write(partial(stored, one), Timing() if timing else None)

    try:
        with counted(server.engine) as count:
            first = checked[:half]
            per_report("store + commit, with Server-Timing", half, lambda: each(first, True))
        print(f"  {'statements per report (with commit)':44s} {count[0] / half:6.1f}", flush=True)
        rest = checked[half:]
        per_report("store + commit, no Server-Timing", len(rest), lambda: each(rest, False))
    finally:
        server.engine.dispose()


def timing_alone(n: int) -> None:
    def one() -> str:
        timing = Timing()
        mark = timing.mark("body", timing.started)
        for name in ("queue", "check", "lock", "pool", "work", "commit"):
            mark = timing.mark(name, mark)
        return timing.header()

    per_report("Server-Timing bookkeeping alone", n, lambda: [one() for _ in range(n)])


async def asgi_post(app: Any, path: str, body: bytes) -> int:
    """One POST through the ASGI app, as uvicorn would hand it over (no socket, no HTTP
    parsing): the status it answered."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 9),
        "server": ("127.0.0.1", 80),
    }
    sent = {"done": False}
    status = [0]

    async def receive() -> dict[str, Any]:
        if sent["done"]:
            await asyncio.sleep(3600)
        sent["done"] = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    await app(scope, receive, send)
    return status[0]


def through_app(url: str, workdir: Path, raws: list[bytes]) -> None:
    app = create_app(Settings(db_url=url, key_path=workdir / "server.key"))

    async def go() -> None:
        async with app.router.lifespan_context(app):
            await asgi_post(app, "/api/v1/reports", raws[0])  # warm: the key cache, the pool
            t0 = time.process_time()
            statuses = [await asgi_post(app, "/api/v1/reports", raw) for raw in raws[1:]]
            ms = (time.process_time() - t0) * 1000 / (len(raws) - 1)
            assert set(statuses) == {200}, set(statuses)
            print(f"  {'whole route through the ASGI app':44s} {ms:6.3f} ms", flush=True)

    asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--reports", type=int, default=2, help="per host, for each stage")
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    keys = [HostKey.generate() for _ in range(args.hosts)]
    # stage 1 (parts, store) takes seq 1..R, stage 2 (the whole route) seq R+1..2R
    bodies = signed_reports(keys, 2 * args.reports)
    first = [raw for messages in bodies for raw in messages[: args.reports]]
    second = [raw for messages in bodies for raw in messages[args.reports :]]
    public = {k.fingerprint(): k.public_key_bytes().hex() for k in keys}
    print(
        f"{len(first)} reports, {len(first[0]) / 1024:.1f} KiB each, on {args.db}: CPU per report"
    )
    with tempfile.TemporaryDirectory() as tmp, database(args.db, Path(tmp)) as url:
        enrolled(url, keys)
        checked = parsing(first, public)
        timing_alone(len(first))
        storing(url, Path(tmp), sorted(checked, key=lambda c: c.body.seq))
        through_app(url, Path(tmp), second)  # in each host's order
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'cpu.db'}"
        return
    with postgres_cluster() as sock:
        yield new_pg_database(sock)


if __name__ == "__main__":
    main()
