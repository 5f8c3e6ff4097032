"""Fleet server ingest speed, measured in one run on PostgreSQL and then on SQLite.

N simulated hosts (real ed25519 keys, enrolled through the API) each send R signed reports of
realistic size (ten findings with evidence, about 5 KB, like a real `patchguard report`), one
after another per host, up to C requests in flight in all, to `patchguard server --workers W`
on this machine. Printed: reports per second (target >= 300/s), the p50/p99 latency of one
report as the sending host sees it (target p99 <= 200 ms), and the server processes' CPU time
per report (the database's own is not counted), which does not depend on what else the
machine runs; the load average says how busy it was. Messages are signed before the clock
starts: signing is the hosts' work, not the server's.

Then, on the same database (the hosts, reports and findings just stored), --entries ledger
entries (100,000; real keys and signatures) are added and the public page `/` is timed: median
and p99 of --rounds renders in process (queries and templates: what the page costs the
server; target <= 100 ms). The machine (CPUs, model) and its load average are printed: on a
shared 2-core machine the rates follow the load, the CPU per report does not, and
"capacity" is what the two cores would carry at that CPU cost (2 s / (server + database CPU
per report)).

Run as root (PostgreSQL runs as the postgres user):
  .venv/bin/python bench/server.py [--hosts 1000] [--reports 3] [--concurrency 32] [--workers 2]
      [--entries 100000] [--rounds 30] [--db both|postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fleet_support import ServerProcess, make_token, new_pg_database, postgres_cluster
from support.synthetic_ledger import Builder, build, store

from patchguard.fleet.wire import Message, enrol_proof, envelope
from patchguard.server.app import Settings, create_app
from patchguard.server.db import engine, session_factory, transaction
from patchguard.signing import HostKey

JSON = {"Content-Type": "application/json"}


def findings(host: int, round_: int) -> list[dict[str, object]]:
    return [
        {
            "surface": surface,
            "technique": "rootkit-helper" if n % 3 else "lockdown-off",
            "severity": ("info", "low", "medium", "high", "critical")[n % 5],
            "subject": f"prog {host * 100 + n} (kill_hook_{round_}) on kprobe/__x64_sys_kill",
            "summary": "a kprobe program that calls bpf_override_return can change what a system "
            "call returns; rootkits use it to hide processes and files",
            "disposition": "suspicious",
            "attack_id": "T1014",
            "evidence": {
                "prog_id": host * 100 + n,
                "tag": "a1b2c3d4e5f60718",
                "helpers": [
                    "bpf_override_return",
                    "bpf_probe_read_kernel",
                    "bpf_get_current_pid_tgid",
                ],
                "maps": [n, n + 1, n + 2],
                "loaded_by": "pid 4242 (agentd)",
            },
        }
        for n, surface in enumerate(["ebpf", "tracing", "modules", "kernel_text", "syscalls"] * 2)
    ]


async def enrol_all(
    client: aiohttp.ClientSession, url: str, token: str, keys: list[HostKey]
) -> None:
    limit = asyncio.Semaphore(32)
    headers = {**JSON, "Authorization": f"Bearer {token}"}

    async def one(n: int, key: HostKey) -> None:
        public = key.public_key_bytes().hex()
        name = f"host-{n:04d}"
        body = {"name": name, "public_key": public, "proof": enrol_proof(name, public, key)}
        async with (
            limit,
            client.post(f"{url}/api/v1/enrol", data=json.dumps(body), headers=headers) as answer,
        ):
            answer.raise_for_status()

    await asyncio.gather(*(one(n, key) for n, key in enumerate(keys)))


Spans = dict[str, float]  # a Server-Timing header: phase -> milliseconds


def server_timing(header: str) -> Spans:
    """`queue;dur=0.12, check;dur=3.40` -> {"queue": 0.12, "check": 3.4}."""
    spans = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name and duration:
            spans[name] = float(duration)
    return spans


def breakdown(latencies: list[float], spans: list[Spans], share: float) -> str:
    """The mean of each server phase over the slowest `share` of requests, and what the server
    did not see (the client's own wait: its event loop, the network, the server's accept and
    HTTP parsing before the handler ran)."""
    ranked = sorted(range(len(latencies)), key=latencies.__getitem__, reverse=True)
    chosen = ranked[: max(1, int(len(ranked) * share))]
    names = list(dict.fromkeys(name for n in chosen for name in spans[n]))
    means = {name: statistics.mean(spans[n].get(name, 0.0) for n in chosen) for name in names}
    total = statistics.mean(latencies[n] * 1000 for n in chosen)
    parts = [f"{name} {ms:.1f}" for name, ms in means.items()]
    parts.append(f"outside the handler {total - sum(means.values()):.1f}")
    return f"mean {total:.1f} ms = " + ", ".join(parts)


async def send_all(
    client: aiohttp.ClientSession, url: str, bodies: list[list[bytes]], concurrency: int
) -> tuple[float, list[float], list[Spans]]:
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    spans: list[Spans] = []

    async def host(messages: list[bytes]) -> None:
        for body in messages:  # a host's reports go in order, one at a time
            async with limit:
                t0 = time.perf_counter()
                async with client.post(f"{url}/api/v1/reports", data=body, headers=JSON) as answer:
                    text = await answer.read()
                latencies.append(time.perf_counter() - t0)
                spans.append(server_timing(answer.headers.get("Server-Timing", "")))
            if answer.status != 200 or not json.loads(text)["stored"]:
                raise SystemExit(f"report refused: {answer.status} {text[:500]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(host(messages) for messages in bodies))
    return time.perf_counter() - t0, latencies, spans


def cpu_seconds(root: int) -> float:
    """User+system CPU of a process and its descendants (uvicorn's workers, PostgreSQL's
    backends), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            # own time, and that of children already reaped (PostgreSQL's closed backends)
            times[pid] = sum(int(n) for n in fields[11:15]) / tick
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(more)
        tree |= more
    return sum(times.get(pid, 0.0) for pid in tree)


def signed_reports(keys: list[HostKey], rounds: int) -> list[list[bytes]]:
    digest = "d" * 64
    return [
        [
            envelope(
                Message(
                    key.fingerprint(),
                    r,
                    "report",
                    {"findings": findings(n, r), "gaps": 2},
                    baseline_digest=digest,
                    boot_id="3f1c2e9a-7b7d-4c51-9c1e-2d0f6a9b8e41",
                ),
                key,
            )
            for r in range(1, rounds + 1)
        ]
        for n, key in enumerate(keys)
    ]


def postmaster(url: str) -> int | None:
    """The PostgreSQL server's pid (its data directory sits beside the socket's)."""
    if "host=" not in url:
        return None
    sock = Path(url.rsplit("host=", 1)[1])
    return int((sock.parent / "data" / "postmaster.pid").read_text().split()[0])


def run(url: str, workdir: Path, args: argparse.Namespace, label: str) -> None:
    server = ServerProcess(url, workdir, workers=args.workers, silence_check=60).start()
    try:
        keys = [HostKey.generate() for _ in range(args.hosts)]
        bodies = signed_reports(keys, args.reports)
        size = statistics.mean(len(b) for b in bodies[0])
        token = make_token(url, "enrol", uses=args.hosts)

        assert server.process is not None
        pid = server.process.pid

        database_pid = postmaster(url)

        def cpus() -> tuple[float, float, float]:
            pg = cpu_seconds(database_pid) if database_pid else 0.0
            mine = sum(os.times()[:2])
            return cpu_seconds(pid), pg, mine

        async def go() -> tuple[float, list[float], list[Spans], tuple[float, ...]]:
            connector = aiohttp.TCPConnector(limit=args.concurrency + 8)
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
                await enrol_all(client, server.url, token, keys)
                before = cpus()
                sent = await send_all(client, server.url, bodies, args.concurrency)
                spent = tuple(b - a for a, b in zip(before, cpus(), strict=True))
                return (*sent, spent)

        seconds, latencies, spans, (cpu, pg_cpu, client_cpu) = asyncio.run(go())
    finally:
        server.stop()
    total = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100)
    capacity = os.cpu_count() or 1
    capacity_rate = total * capacity / (cpu + pg_cpu) if cpu + pg_cpu else 0.0
    print(
        f"{label:10s} {args.hosts} hosts x {args.reports} reports ({size / 1024:.1f} KiB each), "
        f"{args.workers} workers, {args.concurrency} in flight: "
        f"{total / seconds:7.1f} reports/s "
        f"(target >= 300), latency p50 {quantiles[49] * 1000:6.1f} ms, "
        f"p99 {quantiles[98] * 1000:6.1f} ms (target <= 200); server CPU "
        f"{cpu / total * 1000:.1f} ms per report, database {pg_cpu / total * 1000:.1f} ms, "
        f"bench client {client_cpu / total * 1000:.1f} ms: capacity {capacity_rate:.0f} "
        f"reports/s on {capacity} CPUs (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    print(f"{'':10s} slowest 1%: {breakdown(latencies, spans, 0.01)}", flush=True)
    print(f"{'':10s} all:        {breakdown(latencies, spans, 1.0)}", flush=True)


def page_times(url: str, workdir: Path, ledger: Builder, rounds: int, label: str) -> None:
    """The public page with the ledger added to what the ingest run stored."""
    from fastapi.testclient import TestClient

    bound = engine(url)
    with transaction(session_factory(bound)) as session:
        store(session, ledger.rows())
    bound.dispose()
    app = create_app(Settings(db_url=url, key_path=workdir / "server.key"))
    with TestClient(app) as client:
        for _ in range(3):  # warm: templates compiled, the chain's replay under way
            client.get("/")
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            answer = client.get("/")
            times.append((time.perf_counter() - t0) * 1000)
            assert answer.status_code == 200, answer.status_code
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(
        f"{label:10s} public page / with {len(ledger.entries)} ledger entries and the hosts "
        f"above: median {statistics.median(times):.1f} ms, p99 {p99:.1f} ms (target <= 100; "
        f"load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"machine: {os.cpu_count()} CPUs ({model}), load average {os.getloadavg()[0]:.1f}"


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    with postgres_cluster() as sock:
        yield new_pg_database(sock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=3, help="per host")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="server processes on PostgreSQL")
    parser.add_argument(
        "--sqlite-workers", type=int, default=1, help="on SQLite (one writer at a time anyway)"
    )
    parser.add_argument("--db", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--entries", type=int, default=100_000, help="ledger entries; 0: no page")
    parser.add_argument("--rounds", type=int, default=30, help="renders of the public page")
    args = parser.parse_args()
    print(machine(), flush=True)
    kinds = ("postgresql", "sqlite") if args.db == "both" else (args.db,)
    with tempfile.TemporaryDirectory() as keys:
        ledger = build(Path(keys), args.entries) if args.entries else None
        for kind in kinds:
            with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
                workers = args.workers if kind == "postgresql" else args.sqlite_workers
                given = argparse.Namespace(**{**vars(args), "workers": workers})
                run(url, Path(tmp), given, kind)
                if ledger is not None:
                    page_times(url, Path(tmp), ledger, args.rounds, kind)


if __name__ == "__main__":
    main()
