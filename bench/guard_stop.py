"""How fast the guard answers SIGTERM, in the phases that used to hold it (target: every one
under 2 s), and how long its first sweep takes while another process holds the ledger's lock.

Phases: while starting (its signal mask just set), during the first sweep, during the first
sweep with the ledger locked by another process, and after its first sweep while its webhook
accepts connections and never answers. --rounds guards per phase (default 5); median and max.
Run: .venv/bin/python bench/guard_stop.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "live"))
from support.guard_process import Guard, signals_blocked, write_config
from test_guard_stops_live import ledger_locked, make_ledger


def started(g: Guard) -> object:
    return g.event("start")


BODY = 'baseline = ""\nledger = "{ledger}"\nsweep_mean = 600\n'


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/alert"
    finally:
        server.close()


def when_blocked(g: Guard) -> None:
    while not signals_blocked(g.proc.pid):
        time.sleep(0.005)


def one(tmp: Path, ready: Callable[[Guard], object], webhook: str | None, ledger: str) -> float:
    g = Guard(write_config(tmp, BODY.format(ledger=ledger), webhook))
    try:
        ready(g)
        code, took = g.terminate()
        assert code == 0, "".join(g.stderr)
        return took
    finally:
        g.kill()


def phase(name: str, rounds: int, run: Callable[[Path], float]) -> None:
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            times.append(run(Path(tmp)))
    print(f"{name:<34} median {statistics.median(times):.2f} s   max {max(times):.2f} s")


def first_sweep_locked(tmp: Path) -> float:
    ledger = make_ledger(tmp)
    with ledger_locked(ledger):
        g = Guard(write_config(tmp, BODY.format(ledger=ledger)))
        try:
            t0 = time.monotonic()
            g.event("start")
            g.event("sweep", 120)
            return time.monotonic() - t0
        finally:
            g.terminate()
            g.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    phase("SIGTERM while starting", rounds, lambda t: one(t, when_blocked, None, ""))
    phase(
        "SIGTERM in the first sweep", rounds, lambda t: one(t, lambda g: g.event("start"), None, "")
    )

    def locked(tmp: Path) -> float:
        ledger = make_ledger(tmp)
        with ledger_locked(ledger):
            return one(tmp, started, None, str(ledger))

    phase("SIGTERM in a sweep, ledger locked", rounds, locked)

    def silent(tmp: Path) -> float:
        with silent_endpoint() as url:
            return one(tmp, lambda g: g.event("sweep"), url, "")

    phase("SIGTERM, webhook never answers", rounds, silent)
    phase("first sweep, ledger locked (s)", rounds, first_sweep_locked)


if __name__ == "__main__":
    main()
