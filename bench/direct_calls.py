"""What naming every direct ftrace call by what it reaches adds to the tracing surface, measured
in one run: direct_calls() alone (each target's code recognised as a BPF trampoline or not, its
programs read from memory and held against bpf(2)), against the tracing surface's whole collect
(which now includes it). CPU medians beside wall medians: on a loaded machine CPU time says
what wall time cannot. On the 6.18 VMs the agent's ~80 hidden trampolines are what is read.
Run as root: .venv/bin/python bench/direct_calls.py [--rounds N]
"""

from __future__ import annotations

import argparse

from timing import load_note, median_cpu_seconds, median_ms

from patchguard.kernel import Kernel
from patchguard.kernel.ftrace_ops import direct_functions, layout
from patchguard.surfaces.bpf_trampolines import direct_calls
from patchguard.surfaces.tracing import TracingSurface


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

        def reach() -> None:
            direct_calls(kernel, memory, current)

        def surface() -> None:
            TracingSurface().collect(kernel)

        alone, alone_cpu = median_ms(reach, rounds), 1000 * median_cpu_seconds(reach, rounds)
        whole, whole_cpu = median_ms(surface, rounds), 1000 * median_cpu_seconds(surface, rounds)
    finally:
        kernel.close()
    print(f"direct_calls: {alone:.1f} ms wall, {alone_cpu:.1f} ms CPU")
    print(f"tracing surface collect: {whole:.1f} ms wall, {whole_cpu:.1f} ms CPU")
    print(f"direct_calls share of the surface: {alone_cpu / whole_cpu:.0%} of its CPU")
    print(load_note())


if __name__ == "__main__":
    main()
