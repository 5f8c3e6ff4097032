"""What the benches share: the median of a few timed rounds."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    return median_seconds(fn, rounds) * 1000


def process_medians(commands: dict[str, list[str]], rounds: int) -> dict[str, float]:
    """Median wall seconds of each command run as a whole process (output discarded; a
    failing command stops the bench). Rounds are interleaved, so that a change in the
    machine's load falls on every command alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            t0 = time.perf_counter()
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            times[name].append(time.perf_counter() - t0)
            if done.returncode not in (0, 1):  # 1: findings, still a whole run
                raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr!r}")
    return {name: statistics.median(t) for name, t in times.items()}


def load_note() -> str:
    """The machine's load while a bench ran, to print beside its numbers."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} CPUs"
