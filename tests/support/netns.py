"""Throwaway network namespaces for live tests: created with `ip netns add`, always deleted
in a finally, with a veth pair inside; XDP programs and tc filters attached there through
rtnetlink (pyroute2) from a thread that joined the namespace (setns moves one thread only;
`ip netns exec` and `tc -n` would remount /sys and lose the bpffs)."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
XDP_FLAGS = {"generic": 2, "native": 4}  # XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE
TC_PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
T = TypeVar("T")
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def veth_namespace(a: str = "pgv0", b: str = "pgv1") -> Iterator[str]:
    """A new network namespace holding a veth pair `a`/`b`, both up; deleted on exit (which
    takes the devices, their XDP programs and tc filters with it)."""
    name = f"pgtest-{os.getpid()}-{next(_counter)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", a, "type", "veth", "peer", "name", b)
        ip("-n", name, "link", "set", a, "up")
        ip("-n", name, "link", "set", b, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def in_netns(name: str, work: Callable[[], T]) -> T:
    """Run `work` in a thread that joined network namespace `name`; its result or error."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    if errors:
        raise errors[0]
    return result[0]


def _ipr() -> Any:
    from pyroute2.iproute.linux import IPRoute

    return IPRoute()


def attach_xdp(name: str, device: str, prog_fd: int, mode: str = "native") -> None:
    """XDP by netlink (IFLA_XDP_FD), as `ip link set dev X xdp...` does: no BPF link."""

    def work() -> None:
        with _ipr() as ipr:
            index = ipr.link_lookup(ifname=device)[0]
            attrs = [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", XDP_FLAGS[mode])]
            ipr.link("set", index=index, xdp={"attrs": attrs})

    in_netns(name, work)


def attach_tc(name: str, device: str, prog_fd: int, direction: str, prio: int, handle: int) -> None:
    """A clsact qdisc and a direct-action bpf filter, as `tc filter add ... bpf da` does."""

    def work() -> None:
        with _ipr() as ipr:
            index = ipr.link_lookup(ifname=device)[0]
            with contextlib.suppress(Exception):  # the qdisc may be there already
                ipr.tc("add", "clsact", index)
            ipr.tc(
                "add-filter",
                "bpf",
                index,
                f":{handle:x}",
                fd=prog_fd,
                name="pg_test_tc",
                parent=TC_PARENTS[direction],
                prio=prio,
                direct_action=True,
            )

    in_netns(name, work)
