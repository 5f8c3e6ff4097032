"""What naming every direct ftrace call by what it reaches adds to the tracing surface, measured
in one run: direct_calls() alone (each target's code recognised as a BPF trampoline or not, its
programs read from memory and held against bpf(2)), against the tracing surface's whole collect
(which now includes it), each in a look of its own (Kernel.end_look before every round); and
the tracing surface in a look where the kernel_text surface (untimed) has already identified
those trampolines at its ftrace sites, as in a scan (each is read and decoded once a look).
CPU medians beside wall medians: on a loaded machine CPU time says what wall time cannot. On
the 6.18 VMs the agent's ~80 hidden trampolines are what is read.
Run as root: .venv/bin/python bench/direct_calls.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from timing import cpu_seconds, load_note

from patchguard.kernel import Kernel
from patchguard.kernel.ftrace_ops import direct_functions, layout
from patchguard.surfaces.bpf_trampolines import direct_calls
from patchguard.surfaces.kernel_text import KernelTextSurface
from patchguard.surfaces.tracing import TracingSurface


def in_new_looks(
    kernel: Kernel, first: Callable[[], object], timed: Callable[[], object], rounds: int
) -> tuple[float, float]:
    """(wall ms, CPU ms) medians of `timed`, each round in a new look after `first` (untimed)."""
    walls, cpus = [], []
    for _ in range(rounds):
        kernel.end_look()
        first()
        t0, c0 = time.perf_counter(), cpu_seconds()
        timed()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    kernel = Kernel()
    try:
        kernel.attributor()  # shared by every surface in a scan: built once, not timed here
        memory = kernel.memory()
        current = direct_functions(kernel, memory, layout(kernel.vmlinux_btf))
        print(f"direct calls: {sum(1 for t in current.values() if t)}")

        def nothing() -> None:
            pass

        def reach() -> None:
            direct_calls(kernel, memory, current)

        def surface() -> None:
            TracingSurface().collect(kernel)

        def sites_first() -> None:  # its ftrace sites reach the same trampolines
            KernelTextSurface().collect(kernel)

        alone = in_new_looks(kernel, nothing, reach, rounds)
        whole = in_new_looks(kernel, nothing, surface, rounds)
        after = in_new_looks(kernel, sites_first, surface, rounds)
    finally:
        kernel.close()
    print(f"direct_calls, own look: {alone[0]:.1f} ms wall, {alone[1]:.1f} ms CPU")
    print(f"tracing surface collect, own look: {whole[0]:.1f} ms wall, {whole[1]:.1f} ms CPU")
    print(f"tracing surface collect, after kernel_text's sites: {after[0]:.1f} ms wall, "
          f"{after[1]:.1f} ms CPU")  # fmt: skip
    print(f"direct_calls share of the surface: {alone[1] / whole[1]:.0%} of its CPU")
    print(f"tracing after the sites / in its own look: {after[1] / whole[1]:.2f} (CPU)")
    print(load_note())


if __name__ == "__main__":
    main()
