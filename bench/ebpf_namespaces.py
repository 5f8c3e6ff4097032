"""Cost of naming network attach points in every network namespace, as a ratio in one run.

floor = one rtnetlink link dump in this namespace (what `ip link` costs). The ebpf surface
reads every namespace (XDP, tc filters on both clsact hooks, tcx/netkit queries per device);
this reports its time per namespace against the floor, with N throwaway namespaces (each a
veth pair) added for the run and deleted after it.
Run as root: .venv/bin/python bench/ebpf_namespaces.py [--namespaces N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from timing import median_seconds

from patchguard.surfaces.ebpf import network


def floor_once() -> None:
    from pyroute2.iproute.linux import IPRoute

    with IPRoute() as ipr:
        ipr.get_links()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    names = [f"pgbench-{os.getpid()}-{i}" for i in range(args.namespaces)]
    try:
        for name in names:
            ip("netns", "add", name)
            ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        floor = median_seconds(floor_once, args.rounds)
        spaces = network.namespaces(Path("/"))
        surface = median_seconds(lambda: network.attachments(spaces, []), args.rounds)
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
    per = surface / len(spaces)
    print(f"namespaces read: {len(spaces)} in {surface * 1000:.1f} ms ({per * 1000:.2f} ms each)")
    print(f"floor (one link dump here): {floor * 1000:.2f} ms")
    print(f"per namespace / floor: {per / floor:.2f}x")


if __name__ == "__main__":
    main()
