"""Hidden-process surface speed as ratios measured in one run.

floor = list /proc once + ask kill(pid, 0) about the same number of pids through the same
cheapest probe (kernel/pids.py). collect does that and more: the task directory of every
listed process, a BPF task iterator walk with its map copy (where the kernel allows it), the
task list and the pid table walked in kernel memory, and the re-checks of any suspect.
Printed at the machine's pid_max and at 30,000 pids, then again with 2,000 extra sleeping
processes alive (they cost one task-directory listing each), which are killed in `finally`.
The first collect of a Kernel also parses vmlinux BTF for the iterator's offsets: shown
apart, since the guard keeps its Kernel.
Run as root: .venv/bin/python bench/processes.py [--rounds N] [--spawn N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from timing import load_note, median_ms

from patchguard.kernel import Kernel
from patchguard.kernel.bpf.current_task import current_task
from patchguard.kernel.bpf.iterators import TaskIterator
from patchguard.kernel.pids import answering
from patchguard.kernel.tasks import MAX_TASKS, _Walk, layout, tasks_in_place, walk_tasks
from patchguard.surfaces.processes import ProcessesSurface

PIDS = 30_000
Rounds = tuple[float, float, float]


def floor_once(pids: int) -> None:
    os.listdir("/proc")
    answering(range(1, pids + 1))


def interleaved(floor: Callable[[], object], cost: Callable[[], object], rounds: int) -> Rounds:
    """The floor and the cost timed in alternation, round by round, so that a change in the
    machine's load falls on both alike: (median floor ms, median cost ms, median ratio)."""
    pairs = []
    for _ in range(rounds):
        pairs.append((median_ms(floor, 1), median_ms(cost, 1)))
    return (
        statistics.median(f for f, _ in pairs),
        statistics.median(c for _, c in pairs),
        statistics.median(c / f for f, c in pairs),
    )


def report(label: str, kernel: Kernel, pids: int, rounds: int) -> None:
    surface = ProcessesSurface(probe_below=pids + 1)
    floor, cost, ratio = interleaved(
        lambda: floor_once(pids), lambda: surface.collect(kernel), rounds
    )
    counts = surface.collect(kernel).counts
    print(
        f"processes{label}: {pids:,} pids probed in {cost:.1f} ms "
        f"(floor {floor:.1f} ms, ratio {ratio:.2f}, the median of rounds taken in turn; "
        f"{counts['processes']} processes, {counts['threads']} threads, "
        f"{counts['tasks_iterated']} iterated, {counts['tasks_in_memory']} in memory)"
    )


def memory_walk(kernel: Kernel, rounds: int) -> None:
    """The task list walked in memory, per task, against the iterator's walk (read and map
    copy) per task: both are one pass over the kernel's tasks."""
    start = current_task()
    walk_ms = median_ms(lambda: walk_tasks(kernel.memory(), start, kernel.vmlinux_btf), rounds)
    tasks = len(walk_tasks(kernel.memory(), start, kernel.vmlinux_btf))
    with TaskIterator.open(kernel.vmlinux_btf) as iterator:
        iter_ms = median_ms(iterator.walk, rounds)
        iterated = len(iterator.walk().copied)
    print(
        f"memory walk: {tasks} tasks in {walk_ms:.2f} ms ({walk_ms * 1000 / tasks:.1f} us per "
        f"task); iterator read + map copy: {iterated} tasks in {iter_ms:.2f} ms "
        f"({iter_ms * 1000 / max(iterated, 1):.1f} us per task)"
    )
    in_place(kernel, start, rounds)
    strays_share(kernel, start, rounds)


def strays_share(kernel: Kernel, start: int, rounds: int) -> None:
    """What following every walked task's children list (the strays) adds to the walk: both
    parts of one walk timed in each round, the ratio their medians'."""
    walks, strays = [], []
    for _ in range(rounds):
        walk = _Walk(kernel.memory(), layout(kernel.vmlinux_btf), MAX_TASKS)
        t0 = time.perf_counter()
        walk.run(start)
        t1 = time.perf_counter()
        walk.strays()
        walks.append(t1 - t0)
        strays.append(time.perf_counter() - t1)
    walk_ms, strays_ms = statistics.median(walks) * 1e3, statistics.median(strays) * 1e3
    print(
        f"children lists (strays): {strays_ms:.3f} ms after a walk of {walk_ms:.2f} ms "
        f"(ratio {strays_ms / walk_ms:.3f}; {load_note()})"
    )


def in_place(kernel: Kernel, start: int, rounds: int) -> None:
    """A re-check of the largest thread group's tasks where the walk found them (what a
    suspect like pid 1, which the fc kernel's iterator skips, costs) against a whole walk."""
    tasks = walk_tasks(kernel.memory(), start, kernel.vmlinux_btf)
    groups = Counter(t.tgid for t in tasks if t.pid)
    tgid, size = groups.most_common(1)[0]
    known = {t.pid: t.address for t in tasks if t.tgid == tgid}
    ms = median_ms(lambda: tasks_in_place(kernel.memory(), kernel.vmlinux_btf, known), rounds)
    print(
        f"re-check in place: pid {tgid}'s {size} tasks in {ms:.2f} ms (a whole walk re-reads all)"
    )


@contextmanager
def sleepers(count: int) -> Iterator[None]:
    children: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            children.append(subprocess.Popen(["sleep", "600"]))
        yield
    finally:
        for child in children:
            child.kill()  # only our own children, by pid
        for child in children:
            child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--spawn", type=int, default=2000)
    args = parser.parse_args()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())

    t0 = time.perf_counter()
    kernel = Kernel()
    state = ProcessesSurface().collect(kernel)
    first = (time.perf_counter() - t0) * 1000
    gaps = "; ".join(f"{g.what}: {g.reason}" for g in state.gaps) or "none"
    print(
        f"first collect (with the vmlinux BTF parse): {first:.1f} ms; gaps: {gaps}; {load_note()}"
    )

    report(" at pid_max", kernel, pid_max - 1, args.rounds)
    report("", kernel, PIDS, args.rounds)
    with sleepers(args.spawn):
        report(f" +{args.spawn} sleepers", kernel, PIDS, args.rounds)
    memory_walk(kernel, args.rounds)
    probe_ms = median_ms(lambda: answering(range(1, PIDS + 1)), args.rounds)
    print(f"kill(pid, 0) probe: {probe_ms * 1000 / PIDS:.2f} us per pid")


if __name__ == "__main__":
    main()
