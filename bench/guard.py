"""The guard's cost and speed, measured in one run on the live kernel (root).

- idle: CPU time used by a guard with 1 s trigger polls over --idle seconds (default 60), as a
  percentage of one core (target < 0.5 %);
- memory: RSS, PSS and USS (smaps_rollup) and the peak RSS after the first sweep and after the
  idle window, so what a sweep leaves behind and any growth while idle show;
- reaction: --attachments (default 100) raw tracepoint programs attached at random moments;
  time from attach to the guard's finding line; median, p99 and max (target p99 <= 250 ms),
  and what woke the guard for each finding: the kernel's ring buffer (guard/kernel_events.py),
  the control-file watch (guard/control_files.py: not for BPF programs), or the 1 s poll.
--before SRC runs a second guard from another tree's src/ (PYTHONPATH) beside it through the
idle window and the attachments, so the two guards' idle costs and reactions are measured in
the same run, under the same load (the host's other BPF and tracefs users wake both, and each
attachment is timed for both).
--process adds the guard as a whole process: from its start to its first full sweep, against
the floor process (bench/floor_process.py), in the same run.
--sweeps N adds growth: a guard sweeping every ~1 s (and the --before one beside it), its
memory after 1, 10, 100, ... N sweeps; memory that rises with the count is a leak.
Run: .venv/bin/python bench/guard.py [--idle 60] [--attachments 100] [--process] [--before SRC]
     [--sweeps 100]
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
from dataclasses import dataclass, field
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


def _kib_fields(path: Path) -> dict[str, int]:
    """The `Name: <n> kB` lines of a /proc file, in KiB."""
    fields = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def memory_text(pid: int) -> str:
    """RSS; PSS (shared pages split among their users); USS (pages no other process shares:
    what ending the guard would free); anonymous; the peak RSS so far (VmHWM)."""
    rollup = _kib_fields(Path(f"/proc/{pid}/smaps_rollup"))
    peak = _kib_fields(Path(f"/proc/{pid}/status"))["VmHWM"]
    uss = rollup["Private_Clean"] + rollup["Private_Dirty"]
    sizes = (rollup["Rss"], rollup["Pss"], uss, rollup["Anonymous"], peak)
    return "RSS {:.1f}, PSS {:.1f}, USS {:.1f}, anonymous {:.1f}, peak RSS {:.1f} MiB".format(
        *(kib / 1024 for kib in sizes)
    )


Events = Queue[tuple[float, dict[str, object]]]


def _read_lines(out: IO[str], lines: Events) -> None:
    """Each line with when it arrived: two guards' lines are timed alike, whichever is
    read first."""
    for line in out:
        lines.put((time.monotonic(), json.loads(line)))


def _events(proc: subprocess.Popen[str]) -> Events:
    lines: Events = Queue()
    assert proc.stdout is not None
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    return lines


def _until_sweep(lines: Events) -> None:
    while lines.get(timeout=120)[1].get("event") != "sweep":
        pass


def _guard(config: Path, src: Path | None) -> subprocess.Popen[str]:
    """A guard process, from this tree or from another tree's `src`."""
    env = dict(os.environ)
    if src is not None:
        env |= {"PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "patchguard.cli", "guard", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _write_config(tmp: str, name: str, sweep_mean: float) -> Path:
    config = Path(tmp) / f"{name}.toml"
    config.write_text(
        f'[guard]\nbaseline = ""\nspool = "{tmp}/{name}-spool"\n'
        f"trigger_interval = 1.0\nsweep_mean = {sweep_mean}\n"
    )
    return config


def _milestones(n: int) -> list[int]:
    """1, 10, 100, ... up to n, and n."""
    marks = [10**i for i in range(len(str(n))) if 10**i <= n]
    return marks + ([n] if marks[-1] != n else [])


def _count_sweeps(
    proc: subprocess.Popen[str], marks: list[int], seen: dict[int, tuple[str, float]]
) -> None:
    """Read the guard's lines; at each milestone's sweep, its memory (the guard has just
    finished that sweep, so what the sweep left behind is what is measured) and CPU so far."""
    assert proc.stdout is not None
    count = 0
    for line in proc.stdout:
        if json.loads(line).get("event") == "sweep":
            count += 1
            if count in marks:
                seen[count] = (memory_text(proc.pid), cpu_seconds(proc.pid))


def growth(tmp: str, n: int, before: Path | None) -> None:
    """Guards sweeping every ~1 s (sweep_mean 1, the least a config allows): their memory
    after 1, 10, 100, ... n sweeps."""
    config, marks = _write_config(tmp, "growth", 1.0), _milestones(n)
    procs = {"guard": _guard(config, None)}
    if before is not None:
        procs["before"] = _guard(config, before)
    seen: dict[str, dict[int, tuple[str, float]]] = {name: {} for name in procs}
    readers = [
        threading.Thread(target=_count_sweeps, args=(p, marks, seen[name]), daemon=True)
        for name, p in procs.items()
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 30 + 5 * n
    while time.monotonic() < deadline and any(len(seen[name]) < len(marks) for name in procs):
        time.sleep(1)
    for name, proc in procs.items():
        proc.terminate()
        proc.wait(timeout=15)
        for count in marks:
            text = seen[name][count][0] if count in seen[name] else "not reached"
            print(f"memory {name} after {count} sweeps: {text}")
        if len(seen[name]) == len(marks) > 1:
            first, last = marks[0], marks[-1]
            cpu = (seen[name][last][1] - seen[name][first][1]) / (last - first)
            print(
                f"CPU {name} per sweep (sweeps {first}-{last}, with their triggers): "
                f"{cpu * 1000:.0f} ms"
            )


@dataclass
class Reactions:
    """One guard's findings of the bench's programs: latency, what woke it, and how many a
    sweep under way found."""

    latencies: list[float] = field(default_factory=list)
    woken: dict[str, int] = field(default_factory=dict)
    swept: int = 0

    def line(self, name: str) -> str:
        times = sorted(self.latencies)
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        return (
            f"detection latency {name} over {len(times)} attachments: median "
            f"{statistics.median(times) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
            f"{times[-1] * 1000:.0f} ms (target p99 <= 250 ms); woken by: "
            + ", ".join(f"{n} {by}" for by, n in sorted(self.woken.items()))
            + f"; {self.swept} found by a sweep under way"
        )


def _found(lines: Events, prog_id: int, start: float, seen: Reactions) -> None:
    """Wait for the guard's finding of `prog_id`, and count it."""
    while True:
        try:
            at, event = lines.get(timeout=10)
        except Empty:
            raise SystemExit(f"no finding for prog {prog_id} in 10 s") from None
        finding = event.get("finding")
        if isinstance(finding, dict) and finding.get("evidence", {}).get("prog_id") == prog_id:
            seen.latencies.append(at - start)
            by = str(event.get("woken_by", "sweep"))
            seen.woken[by] = seen.woken.get(by, 0) + 1
            seen.swept += event.get("why") == "sweep"  # a sweep under way found it
            return


def reaction(guards: dict[str, Events], attachments: int) -> None:
    """Raw tracepoint programs attached at random moments, each found by every guard (both
    guards watch the same kernel, so each attachment times both under the same load)."""
    seen = {name: Reactions() for name in guards}
    for i in range(attachments):
        with bp.attach_raw_tracepoint("sys_enter", f"pg_bench_{i}") as prog:
            start = time.monotonic()
            for name, lines in guards.items():
                _found(lines, prog.prog_id, start, seen[name])
        bp.wait_gone(prog.prog_id)
        # a random pause, so attachments do not fall at the same phase of the 1 s tick
        time.sleep(random.uniform(0.3, 1.3))
    for name, reactions in seen.items():
        print(reactions.line(name))


def idle(pids: dict[str, int], seconds: float) -> None:
    c0, t0 = {n: cpu_seconds(pid) for n, pid in pids.items()}, time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    for name, pid in pids.items():
        used = cpu_seconds(pid) - c0[name]
        print(
            f"idle {name}, 1 s triggers: {100 * used / wall:.2f} % of one core over "
            f"{wall:.0f} s (target < 0.5 %)"
        )
        print(f"memory {name} after the idle window: {memory_text(pid)}")


def process_line(first_sweep: float) -> str:
    floor = process_medians({"floor": [sys.executable, FLOOR]}, 3)["floor"]
    return (
        f"process: guard start to first sweep {first_sweep * 1000:.0f} ms, floor "
        f"{floor * 1000:.0f} ms, ratio {first_sweep / floor:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--attachments", type=int, default=100)
    parser.add_argument("--process", action="store_true", help="start to first sweep, too")
    parser.add_argument("--before", type=Path, metavar="SRC", help="another tree's src/")
    parser.add_argument("--sweeps", type=int, default=0, help="memory after up to N sweeps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = _write_config(tmp, "guard", 300)
        t_start = time.monotonic()
        procs = {"guard": _guard(config, None)}
        guards = {"guard": _events(procs["guard"])}
        _until_sweep(guards["guard"])
        first_sweep = time.monotonic() - t_start
        if args.before is not None:
            procs["before"] = _guard(config, args.before)
            guards["before"] = _events(procs["before"])
            _until_sweep(guards["before"])
        for name, proc in procs.items():
            print(f"memory {name} after its first sweep: {memory_text(proc.pid)}")
        idle({name: proc.pid for name, proc in procs.items()}, args.idle)
        if args.attachments > 0:
            reaction(guards, args.attachments)
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=15)
        if args.process:
            print(process_line(first_sweep))
        if args.sweeps > 0:
            growth(tmp, args.sweeps, args.before)
    print(load_note())


if __name__ == "__main__":
    main()
