"""Cost per loaded BPF program in the scan's ebpf surface, measured in one run.

The surface (collect + assess, as the scan runs it) is timed with this process holding
0 throwaway programs, then N (socket filters kept alive by their fds; every tenth one attached
to a raw tracepoint through a link, so links are named too). Cost per program =
(time with N - time with 0) / N; target <= 1 ms. Every program and link is closed when the
bench ends, also on failure. Other processes' programs count in both runs alike.
Run as root: .venv/bin/python bench/ebpf_scale.py [--programs N] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from timing import median_seconds

from patchguard.kernel import Kernel
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import R0, exit_insn, mov64_imm
from patchguard.surfaces.ebpf import EbpfSurface

SOCKET_FILTER, RAW_TRACEPOINT = 1, 17
RETURN_ZERO = mov64_imm(R0, 0) + exit_insn()


def surface_once() -> int:
    """The surface as the scan runs it; the programs it listed."""
    kernel = Kernel()
    try:
        surface = EbpfSurface()
        state = surface.collect(kernel)
        surface.assess(state)
        return state.counts["programs"]
    finally:
        kernel.close()


def _load(i: int) -> list[int]:
    if i % 10:
        return [bpf.prog_load(SOCKET_FILTER, RETURN_ZERO, f"pg_scale_{i}")]
    fd = bpf.prog_load(RAW_TRACEPOINT, RETURN_ZERO, f"pg_scale_{i}")
    try:
        return [fd, bpf.raw_tracepoint_open("sched_process_fork", fd)]
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def programs(count: int) -> Iterator[None]:
    fds: list[int] = []
    try:
        for i in range(count):
            fds += _load(i)
        yield
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base, listed = median_seconds(surface_once, args.rounds), surface_once()
    with programs(args.programs):
        loaded, more = median_seconds(surface_once, args.rounds), surface_once()
    per = (loaded - base) / args.programs * 1e3
    print(f"ebpf surface, {listed} programs on the host: {base * 1e3:.1f} ms")
    print(f"ebpf surface with {args.programs} more ({more} listed): {loaded * 1e3:.1f} ms")
    print(f"cost per program: {per:.3f} ms (target <= 1 ms)")


if __name__ == "__main__":
    main()
