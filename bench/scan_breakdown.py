"""Where a whole `scan --json` process's CPU goes, measured in fresh interpreters: Python's
start, importing the surfaces, each surface's collect + assess (thread CPU, one worker, so
each surface's time is its own and the lazy imports it triggers are charged to it), the rest
of the scan (other threads: the kallsyms read-ahead, namespace readers), and the JSON
document. Median of N processes; the child (--child) prints one JSON line of milliseconds.

What bench/scan.py --process cannot say: which part keeps the process above its floor.
Run as root: .venv/bin/python bench/scan_breakdown.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from timing import bytecode_as_installed, load_note


def child() -> None:
    """One scan, timed by part, in this fresh interpreter."""
    c0 = time.process_time()
    from patchguard import scan
    from patchguard.kernel import Kernel
    from patchguard.report import to_json
    from patchguard.surfaces import all_surfaces
    from patchguard.surfaces.base import Surface

    surfaces = all_surfaces()
    c1 = time.process_time()
    per: dict[str, float] = {}
    run_one = scan._run_one

    def timed(surface: Surface, kernel: Kernel, policy: scan.Policy | None) -> scan.SurfaceResult:
        t0 = time.thread_time()
        result = run_one(surface, kernel, policy)
        per[surface.name] = (time.thread_time() - t0) * 1000
        return result

    scan._run_one = timed  # the same call, timed
    kernel = Kernel()
    report = scan.run_scan(kernel, surfaces, workers=1)
    kernel.close()
    c2 = time.process_time()
    json.dumps(to_json(report, records=False), indent=2)
    c3 = time.process_time()
    parts = {"imports": (c1 - c0) * 1000, **per}
    parts |= {"other threads": (c2 - c1) * 1000 - sum(per.values()), "json": (c3 - c2) * 1000}
    print(json.dumps(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    print(bytecode_as_installed())
    runs = [_one() for _ in range(args.rounds)]
    start = statistics.median(_python_start() for _ in range(args.rounds))
    print(f"python start {start:.1f} ms CPU")
    for part in runs[0]:
        print(f"{part}: {statistics.median(r[part] for r in runs):.1f} ms CPU")
    print(load_note())


def _one() -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child"], capture_output=True, text=True, check=True
    )
    parts: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return parts


def _python_start() -> float:
    """CPU ms of `python3 -c pass`, as this bench's children are timed: by rusage."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000


if __name__ == "__main__":
    main()
