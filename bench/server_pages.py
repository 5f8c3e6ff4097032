"""The server's public pages, measured in one run: render time with a big ledger and fleet.

Set-up: 100,000 ledger entries (real keys and signatures, each accepted by the ledger's rules),
1,000 hosts, and 5,000 findings over the last 30 days, in SQLite (default) or the database
--db names. Measured, as the median and p99 of --rounds requests each, in-process through
the app (queries + templates; what the page costs the server) and over HTTP from a real
`patchguard server` process on the same database:
- `/` (fleet health, the chart, fairness, the newest ledger page), target <= 100 ms;
- `/ledger?before=N/2` (a page in the middle: keyset paging), `/ledger/<7N/9>` (one entry);
- the floor: `/api/v1/health`, the framework's cost for any answer, and the ratio to it.
Also: the first view after start (the whole-chain replay runs in the background; the page
does not wait for it) and how long that replay takes.
Run: .venv/bin/python bench/server_pages.py [--entries 100000] [--hosts 1000] [--rounds 50]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.synthetic_ledger import build, store

from patchguard.server.app import Settings, create_app
from patchguard.server.db import (
    FindingRow,
    Host,
    Report,
    engine,
    session_factory,
    transaction,
    utcnow,
)
from patchguard.server.migrate import migrate

TARGET_MS = 100.0
SEVERITIES = ("critical", "high", "medium", "low", "info")


def fill(url: str, keys: Path, entries: int, hosts: int, findings: int) -> None:
    t0 = time.perf_counter()
    ledger = build(keys, entries)
    print(f"built {len(ledger.entries)} signed entries in {time.perf_counter() - t0:.1f} s")
    bound = engine(url)
    migrate(bound)
    now, rng = utcnow(), random.Random(7)
    with transaction(session_factory(bound)) as session:
        store(session, ledger.rows())
        made = [_host(n, now, rng) for n in range(hosts)]
        session.add_all(made)
        session.flush()
        for n, host in enumerate(made[: max(findings // 5, 1)]):
            report = Report(
                report_id=f"bench-{n}",
                host_id=host.id,
                seq=1,
                kind="sweep",
                sent_at=now,
                received_at=now,
                baseline_digest=None,
                body="{}",
                signature="00",
            )
            session.add(report)
            session.flush()
            for k in range(5):
                seen = now - timedelta(days=rng.randrange(30), seconds=rng.randrange(86400))
                session.add(_finding(host.id, report.id, rng.choice(SEVERITIES), k, seen))
    bound.dispose()


def _host(n: int, now: datetime, rng: random.Random) -> Host:
    seen = now - timedelta(seconds=rng.randrange(120))
    return Host(
        name=f"host-{n:04d}.fleet.example",
        public_key="ab" * 32,
        fingerprint=f"{n:016x}",
        enrolled_at=seen,
        revoked_at=None,
        last_seq=1,
        last_seen_at=seen,
        last_report_at=seen,
        heartbeat_interval=60,  # 3 missed: 180 s, longer than any host here was quiet
        status="active",
    )


def _finding(host: int, report: int, severity: str, k: int, seen: datetime) -> FindingRow:
    return FindingRow(
        host_id=host,
        report_pk=report,
        severity=severity,
        technique=f"technique-{k}",
        subject="sys_call_table[59]",
        summary="an entry point outside the kernel",
        disposition="tampering",
        evidence={"bytes": "e8 00 00 00 00"},
        seen_at=seen,
    )


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(median, p99) in ms."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def _get(client: TestClient, path: str) -> Callable[[], object]:
    def fetch() -> object:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code)
        return answer

    return fetch


def _http(base: str, path: str) -> Callable[[], bytes]:
    def fetch() -> bytes:
        with urllib.request.urlopen(base + path, timeout=30) as answer:
            body: bytes = answer.read()
            return body

    return fetch


def paths(entries: int) -> tuple[str, ...]:
    """The public page, a ledger page in the middle, one entry."""
    return ("/", f"/ledger?before={entries // 2}", f"/ledger/{entries * 7 // 9}")


def in_process(url: str, workdir: Path, entries: int, rounds: int) -> None:
    app = create_app(Settings(db_url=url, key_path=workdir / "server.key"))
    with TestClient(app) as client:
        t0 = time.perf_counter()
        client.get("/")
        print(f"first view after start: {(time.perf_counter() - t0) * 1000:.0f} ms")
        while f"All {entries} entries verify" not in client.get("/").text:
            time.sleep(0.2)
        print(f"whole-chain replay ({entries} entries): {time.perf_counter() - t0:.1f} s")
        floor, _ = timed(_get(client, "/api/v1/health"), rounds)
        print(f"in-process floor /api/v1/health: {floor:.2f} ms")
        for path in paths(entries):
            median, p99 = timed(_get(client, path), rounds)
            verdict = "ok" if path != "/" or median <= TARGET_MS else "OVER TARGET"
            print(
                f"in-process {path}: median {median:.1f} ms, p99 {p99:.1f} ms, "
                f"{median / floor:.1f} x floor ({verdict}; target <= {TARGET_MS:.0f} ms)"
            )


def _answers(base: str, path: str, text: bytes) -> bool:
    try:
        return text in _http(base, path)()
    except OSError:
        return False


def _until(
    ready: Callable[[], bool], server: subprocess.Popen[bytes], seconds: float, workdir: Path
) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline or server.poll() is not None:
            log = (workdir / "server.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"the server did not get ready in {seconds:.0f} s:\n{log}")
        time.sleep(0.3)


def over_http(url: str, workdir: Path, entries: int, rounds: int) -> None:
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "patchguard.cli", "server", "--db", url]
    argv += ["--listen", f"127.0.0.1:{port}", "--key", str(workdir / "server.key")]
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        _until(lambda: _answers(base, "/api/v1/health", b"ok"), server, 60, workdir)
        done = f"All {entries} entries verify".encode()
        _until(lambda: _answers(base, "/", done), server, 1200, workdir)
        print(f"server process: whole-chain replay done {time.monotonic() - t0:.1f} s after start")
        floor, _ = timed(_http(base, "/api/v1/health"), rounds)
        print(f"HTTP floor /api/v1/health: {floor:.2f} ms")
        for path in paths(entries):
            median, p99 = timed(_http(base, path), rounds)
            ratio = median / floor
            print(f"HTTP {path}: median {median:.1f} ms, p99 {p99:.1f} ms, {ratio:.1f} x floor")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--findings", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--db", help="a database URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="patchguard-pages-bench-") as tmp:
        workdir = Path(tmp)
        url = args.db or f"sqlite:///{workdir / 'server.db'}"
        fill(url, workdir / "keys", args.entries, args.hosts, args.findings)
        in_process(url, workdir, args.entries, args.rounds)
        over_http(url, workdir, args.entries, args.rounds)


if __name__ == "__main__":
    main()
