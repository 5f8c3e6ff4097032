"""What reading every tracepoint's probes from memory adds to the scan, measured in one run.

Timed with the kernel's state shared, as scan shares it (kallsyms parsed, the memory reader
and the attributor open): collect_probes alone (every core and module tracepoint found from
memory, each probe named), the tracing surface's whole collect, and the whole scan. Reported
as milliseconds and as shares of the tracing surface and of the scan; target: the probes add
at most a few milliseconds (<= 5 ms on a quiet machine) and <= 2 % of the scan. CPU time is
printed too: on a loaded machine it says what the wall time cannot.
Run as root: .venv/bin/python bench/tracepoint_probes.py [--rounds N]
"""

from __future__ import annotations

import argparse

from timing import load_note, median_cpu_seconds, median_ms

from patchguard.kernel import Kernel
from patchguard.scan import run_scan
from patchguard.surfaces import all_surfaces
from patchguard.surfaces.reading import Reading
from patchguard.surfaces.tracing import TracingSurface
from patchguard.surfaces.tracing.probes import collect_probes

TRACEFS = "/sys/kernel/tracing"


def scan_once() -> None:
    kernel = Kernel()
    try:
        run_scan(kernel, all_surfaces())
    finally:
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    kernel = Kernel()
    try:
        kernel.attributor()  # shared by every surface in a scan: built once, not timed here
        probes = median_ms(lambda: collect_probes(Reading("tracing", kernel), TRACEFS), rounds)
        probes_cpu = 1000 * median_cpu_seconds(
            lambda: collect_probes(Reading("tracing", kernel), TRACEFS), rounds
        )
        surface = median_ms(lambda: TracingSurface().collect(kernel), rounds)
    finally:
        kernel.close()
    scan = median_ms(scan_once, max(3, rounds // 5))
    print(f"tracepoint probes (collect_probes): {probes:.1f} ms wall, {probes_cpu:.1f} ms CPU")
    print(f"tracing surface collect: {surface:.1f} ms; probes are {probes / surface:.0%} of it")
    print(f"scan (all surfaces): {scan:.0f} ms; probes are {probes / scan:.1%} of it")
    print(load_note())


if __name__ == "__main__":
    main()
