"""Sockets surface speed on 10,000 sockets of this process: time per socket and in all.

The bench opens loopback sockets in this process (listeners, and connections counted on both
ends, accepted side included) until the namespace holds --sockets more than before, then
times collect() (default probe mode "auto": the port space is probed only where sockstat
counts more sockets than the views list) and prints the median, the time per socket, and that
time at 10,000 sockets against the target (200 ms): the surface reads every socket of the
machine, so other processes' sockets are in the count too. Floor: reading the seven
/proc/net files once, the cheapest of the views.
CPU time (user and system) is printed beside wall time: on a machine shared with other busy
processes, wall time also counts waiting for a CPU. The first collect, which also imports
the surface's lazy modules and reads vmlinux's BTF, is shown apart; so is a probe of every
port (mode "all"), which costs the same whatever the number of sockets.
All sockets are closed at the end. Run as root: .venv/bin/python bench/sockets.py
(on a machine shared with busy processes, `chrt -f 10 .venv/bin/python bench/sockets.py`
measures the surface's own time, not its wait for a CPU).
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack

from timing import median_ms

from patchguard.kernel import Kernel
from patchguard.surfaces.sockets import SocketsSurface
from patchguard.surfaces.sockets.records import PROTOCOLS

TARGET_MS = 200.0
TARGET_SOCKETS = 10_000
LISTENERS_PER = 5  # one listener for every five connections


def open_sockets(stack: ExitStack, count: int) -> int:
    """Listeners and connected pairs on 127.0.0.1 until `count` sockets are open."""
    opened = 0
    while opened < count:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(LISTENERS_PER)
        opened += 1
        for _ in range(min(LISTENERS_PER, (count - opened) // 2)):
            stack.enter_context(socket.create_connection(listener.getsockname()))
            stack.enter_context(listener.accept()[0])
            opened += 2
    return opened


def median_cpu_ms(fn: Callable[[], object], rounds: int) -> float:
    """CPU time of this process (user and system: the kernel's work for it included); unlike
    wall time, not stretched by other processes on a shared machine."""
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1000


def read_proc_net() -> None:
    for protocol in PROTOCOLS:
        with open(f"/proc/net/{protocol}", "rb") as f:
            f.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.sockets + 1000)), hard))

    kernel = Kernel()
    t0 = time.perf_counter()
    SocketsSurface().collect(kernel)
    print(f"first collect (with its imports and BTF): {(time.perf_counter() - t0) * 1000:.1f} ms")
    with ExitStack() as stack:
        opened = open_sockets(stack, args.sockets)
        surface = SocketsSurface()
        state = surface.collect(kernel)
        cost = median_ms(lambda: surface.collect(kernel), args.rounds)
        cpu = median_cpu_ms(lambda: surface.collect(kernel), args.rounds)
        floor = median_ms(read_proc_net, args.rounds)
        gaps = "; ".join(sorted({g.reason for g in state.gaps})) or "none"
        seen = state.counts["sockets"]
        per_wall, per_cpu = cost * 1000 / seen, cpu * 1000 / seen
        at_target = per_wall * TARGET_SOCKETS / 1000
        print(
            f"sockets: {seen:,} sockets in {state.counts['namespaces']} namespaces "
            f"({opened:,} opened here, the rest other processes'): collect {cost:.1f} ms wall, "
            f"{cpu:.1f} ms CPU; per socket {per_wall:.1f} us wall, {per_cpu:.1f} us CPU; "
            f"floor (read /proc/net) {floor:.1f} ms, ratio {cost / floor:.1f}; "
            f"{len(surface.assess(state))} findings; gaps: {gaps}"
        )
        print(
            f"at {TARGET_SOCKETS:,} sockets: {at_target:.1f} ms wall, "
            f"{per_cpu * TARGET_SOCKETS / 1000:.1f} ms CPU "
            f"(target {TARGET_MS:.0f} ms: {'met' if at_target <= TARGET_MS else 'MISSED'})"
        )
        every = SocketsSurface("all")
        probe_all = median_ms(lambda: every.collect(kernel), 3)
        print(f"probe mode all (every tcp and udp port, in each namespace): {probe_all:.1f} ms")


if __name__ == "__main__":
    main()
