"""The guard's reaction to new hooks in one boot of the lab guest (Debian's 6.1 under QEMU,
TCG): tests/lab/guest_guard_wake.py runs the guard with its trigger poll every second (the
default) and adds --rounds (default 30) of each at random moments: pg_noop loaded with insmod
(and unloaded), a kprobe written to tracefs kprobe_events, a kprobe opened through perf's
kprobe PMU, a uprobe written to uprobe_events, and a function tracer set in a new tracefs
instance. Printed per kind and over all: median, p99 and max reaction (from the call's return
to the guard's finding line; target p99 <= 250 ms) and how many the kernel woke the guard for
(ring buffer or inotify) rather than the poll.
TCG emulates every instruction: the guest runs many times slower than the host, and its speed
follows the host's load. The times here are an upper bound of what a real machine shows; what
compares across runs is the share woken by the kernel and the ratio to the poll.
Run as root, after lab/build: .venv/bin/python bench/guard_guest.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("tests", "tests/lab")]
from support.lab_guest import run_lab  # noqa: E402

POLL = 1.0  # the guard's default trigger_interval


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def summary(name: str, reactions: list[dict[str, Any]]) -> str:
    seen = [r for r in reactions if not r.get("missed")]
    times = [r["seconds"] * 1000 for r in seen]
    if not times:
        return f"  {name}: none reported of {len(reactions)}"
    by: dict[str, int] = {}
    for r in seen:
        by[str(r["woken_by"])] = by.get(str(r["woken_by"]), 0) + 1
    woken = ", ".join(f"{count} {cause}" for cause, count in sorted(by.items()))
    return (
        f"  {name}: {len(times)} of {len(reactions)} reported, median "
        f"{statistics.median(times):.0f} ms, p99 {p99(times):.0f} ms, max {max(times):.0f} ms; "
        f"woken by: {woken}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    command = ["python3", "/src/tests/lab/guest_guard_wake.py", "/results"]
    command += [str(args.rounds), str(POLL)]
    with tempfile.TemporaryDirectory() as out:
        run = run_lab(Path(out), ("pg_noop",), command, timeout=600 + 40 * args.rounds)
        if run.returncode != 0:
            sys.exit(f"lab/run exited {run.returncode}: {run.stderr[-2000:]}")
        found = json.loads((Path(out) / "guest_guard_wake.json").read_text())
    if "error" in found:
        sys.exit(f"the guest run failed: {found['error']}\n{found['stderr']}")
    reactions = found["reactions"]
    print(f"lab guest (6.1, TCG), guard poll {POLL} s, {args.rounds} rounds:")
    for kind in ("module", "kprobe_events", "perf_kprobe", "uprobe_events", "instance_tracer"):
        print(summary(kind, [r for r in reactions if r["kind"] == kind]))
    print(summary("all", reactions) + " (target p99 <= 250 ms)")
    one, five, _ = os.getloadavg()
    print(f"host load average {one:.1f} (5 min {five:.1f}) at the end")


if __name__ == "__main__":
    main()
