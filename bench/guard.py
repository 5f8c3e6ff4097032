"""The guard's cost and speed, measured in one run on the live kernel (root).

- idle: CPU time used by a guard with 1 s trigger polls over --idle seconds (default 60), as a
  percentage of one core (target < 0.5 %), and its RSS;
- reaction: --attachments (default 100) raw tracepoint programs attached at random moments;
  time from attach to the guard's finding line; median, p99 and max (target p99 <= 250 ms),
  and what woke the guard for each finding: the kernel's ring buffer (guard/kernel_events.py),
  the control-file watch (guard/control_files.py: not for BPF programs), or the 1 s poll.
--before SRC runs a second guard from another tree's src/ (PYTHONPATH) beside it through the
idle window, so the two idle costs are measured in the same run, under the same load (the
host's other BPF and tracefs users wake both).
--process adds the guard as a whole process: from its start to its first full sweep, against
the floor process (bench/floor_process.py), in the same run.
Run: .venv/bin/python bench/guard.py [--idle 60] [--attachments 100] [--process] [--before SRC]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty, Queue
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import bpfprogs as bp
from timing import load_note, process_medians

TICKS = os.sysconf("SC_CLK_TCK")
FLOOR = str(Path(__file__).with_name("floor_process.py"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _read_lines(out: IO[str], lines: Queue[dict[str, object]]) -> None:
    for line in out:
        lines.put(json.loads(line))


def _started(config: Path, src: Path) -> subprocess.Popen[str]:
    """A guard from `src`, past its first sweep (its lines are read and dropped)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchguard.cli", "guard", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line).get("event") == "sweep":
            break
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--attachments", type=int, default=100)
    parser.add_argument("--process", action="store_true", help="start to first sweep, too")
    parser.add_argument("--before", type=Path, metavar="SRC", help="another tree's src/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "guard.toml"
        config.write_text(
            f'[guard]\nbaseline = ""\nspool = "{tmp}/spool"\n'
            "trigger_interval = 1.0\nsweep_mean = 300\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "patchguard.cli", "guard", "--config", str(config)],
            stdout=subprocess.PIPE,
            text=True,
        )
        lines: Queue[dict[str, object]] = Queue()
        assert proc.stdout is not None
        out = proc.stdout
        threading.Thread(target=_read_lines, args=(out, lines), daemon=True).start()
        t_start = time.monotonic()
        while lines.get(timeout=120).get("event") != "sweep":
            pass
        first_sweep = time.monotonic() - t_start
        before = None if args.before is None else _started(config, args.before)
        pids = {"guard": proc.pid, **({"before": before.pid} if before else {})}
        c0, t0 = {n: cpu_seconds(pid) for n, pid in pids.items()}, time.monotonic()
        time.sleep(args.idle)
        wall = time.monotonic() - t0
        for name, pid in pids.items():
            used = cpu_seconds(pid) - c0[name]
            print(
                f"idle {name}, 1 s triggers: {100 * used / wall:.2f} % of one core over "
                f"{wall:.0f} s (target < 0.5 %), RSS {rss_mib(pid):.1f} MiB"
            )
        if before is not None:
            before.terminate()
            before.wait(timeout=15)
        latencies, swept = [], 0
        woken: dict[str, int] = {}
        for i in range(args.attachments):
            with bp.attach_raw_tracepoint("sys_enter", f"pg_bench_{i}") as prog:
                start = time.monotonic()
                while True:
                    try:
                        event = lines.get(timeout=10)
                    except Empty:
                        raise SystemExit(f"no finding for prog {prog.prog_id} in 10 s") from None
                    finding = event.get("finding")
                    if (
                        isinstance(finding, dict)
                        and finding.get("evidence", {}).get("prog_id") == prog.prog_id
                    ):
                        latencies.append(time.monotonic() - start)
                        by = str(event.get("woken_by", "sweep"))
                        woken[by] = woken.get(by, 0) + 1
                        swept += event.get("why") == "sweep"  # a sweep under way found it
                        break
            bp.wait_gone(prog.prog_id)
            # a random pause, so attachments do not fall at the same phase of the 1 s tick
            time.sleep(random.uniform(0.3, 1.3))
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        print(
            f"detection latency over {len(latencies)} attachments: median "
            f"{statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
            f"{latencies[-1] * 1000:.0f} ms (target p99 <= 250 ms); woken by: "
            + ", ".join(f"{n} {by}" for by, n in sorted(woken.items()))
            + f"; {swept} found by a sweep under way"
        )
        proc.terminate()
        proc.wait(timeout=15)
        if args.process:
            floor = process_medians({"floor": [sys.executable, FLOOR]}, 3)["floor"]
            print(
                f"process: guard start to first sweep {first_sweep * 1000:.0f} ms, floor "
                f"{floor * 1000:.0f} ms, ratio {first_sweep / floor:.2f}"
            )
    print(load_note())


if __name__ == "__main__":
    main()
