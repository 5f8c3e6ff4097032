"""What the benches share: the median of a few timed rounds, in wall time and in CPU time (on
a shared, loaded machine the CPU a command used is the steadier measure: wall time also counts
the time it waited for a CPU)."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    return median_seconds(fn, rounds) * 1000


def cpu_seconds() -> float:
    """CPU (user + system) used so far by this process, all its threads, and its children
    that have ended (the kallsyms read's child)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def median_cpu_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        c0 = cpu_seconds()
        fn()
        times.append(cpu_seconds() - c0)
    return statistics.median(times)


def patchguard_command() -> list[str]:
    """`patchguard` as a user runs it: the script installed beside this interpreter (a venv),
    else the repository's bin/patchguard run by it (the lab guest, which installs nothing)."""
    installed = os.path.join(os.path.dirname(sys.executable), "patchguard")
    if os.path.exists(installed):
        return [installed]
    return [sys.executable, os.path.join(os.path.dirname(__file__), "..", "bin", "patchguard")]


@dataclass(frozen=True)
class Cost:
    """Median seconds of one command run as a whole process."""

    wall: float
    cpu: float  # user + system of the process and its children


def bytecode_as_installed() -> str:
    """Compile patchguard's modules to their __pycache__, as `pip install` does for an
    installed package, and say so. Where PYTHONDONTWRITEBYTECODE is set (these helpers'
    shells set it) an editable install never writes them: every process would compile ~130
    modules from source, ~80 ms of CPU a user of the installed package does not pay."""
    import compileall

    import patchguard

    package = os.path.dirname(patchguard.__file__)
    if os.access(package, os.W_OK) and compileall.compile_dir(package, quiet=2):
        return f"bytecode: {package} compiled as an install does (PYTHONDONTWRITEBYTECODE ignored)"
    copy = _compiled_copy(package)
    return f"bytecode: {package} is read-only (the lab's /src): timed from a compiled copy, {copy}"


def _compiled_copy(package: str) -> str:
    """The package copied to a temporary directory and compiled there, first on the path of
    every process this bench starts (PYTHONPATH is inherited)."""
    import atexit
    import compileall
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="pg-bench-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    target = os.path.join(root, os.path.basename(package))
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    if not compileall.compile_dir(target, quiet=2):
        raise SystemExit(f"{target}: compileall failed")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return target


def process_costs(commands: dict[str, list[str]], rounds: int) -> dict[str, Cost]:
    """Median wall and CPU seconds of each command run as a whole process (output discarded;
    a failing command stops the bench), with patchguard's bytecode compiled as an install
    has it. Rounds are interleaved, so that a change in the machine's load falls on every
    command alike."""
    print(bytecode_as_installed())
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            t0, c0 = time.perf_counter(), _children_cpu()
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(_children_cpu() - c0)
            if done.returncode not in (0, 1):  # 1: findings, still a whole run
                raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr!r}")
    return {
        name: Cost(statistics.median(walls[name]), statistics.median(cpus[name]))
        for name in commands
    }


def process_medians(commands: dict[str, list[str]], rounds: int) -> dict[str, float]:
    """Median wall seconds of each command run as a whole process (see process_costs)."""
    return {name: cost.wall for name, cost in process_costs(commands, rounds).items()}


def ratios(costs: dict[str, Cost], name: str, floor: str) -> str:
    """`name` against `floor`: both times and both ratios, wall and CPU."""
    a, b = costs[name], costs[floor]
    return (
        f"{a.wall * 1000:.0f} ms wall, {a.cpu * 1000:.0f} ms CPU; ratio {a.wall / b.wall:.2f} "
        f"wall, {a.cpu / b.cpu:.2f} CPU"
    )


def _children_cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def load_note() -> str:
    """The machine's load while a bench ran, to print beside its numbers."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} CPUs"
