"""Network devices and their tc filters from rtnetlink (NETLINK_ROUTE): the RTM_GETLINK and
RTM_GETTFILTER dumps, each reply's fixed header and attributes as the kernel sent them
(kernel/netlink.py says why not pyroute2). The socket is made in the calling thread, so the
dumps are of the network namespace that thread is in."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from patchguard.kernel import netlink
from patchguard.kernel.errors import KernelAccessError, explain_errno
from patchguard.kernel.netlink import DumpInterrupted

NETLINK_ROUTE = 0
RTM_GETLINK, RTM_GETTFILTER = 18, 46
IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg: family, pad, type, index, flags, change
TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg: family, pads, ifindex, handle, parent, info
IFLA_IFNAME, IFLA_XDP = 3, 43
TCA_KIND, TCA_OPTIONS = 1, 2
MAX_REPLIES = 1_000_000  # per dump: memory stays bounded whatever the kernel sends
T = TypeVar("T")


@dataclass(frozen=True)
class Link:
    """One network device as RTM_NEWLINK gives it."""

    index: int
    name: str
    xdp: dict[int, bytes]  # IFLA_XDP's nested attributes by type (empty: none sent)


@dataclass(frozen=True)
class Filter:
    """One tc filter as RTM_NEWTFILTER gives it."""

    handle: int
    info: int  # priority << 16 | protocol
    kind: str | None  # TCA_KIND: "bpf", "u32", ...
    options: dict[int, bytes] | None  # TCA_OPTIONS's nested attributes (None: not sent)


def links() -> list[Link]:
    """Every network device of the calling thread's network namespace."""
    return _dump(RTM_GETLINK, IFINFO, IFINFO.pack(0, 0, 0, 0, 0), "rtnetlink links", _link)


def filters(index: int, parent: int) -> list[Filter]:
    """The tc filters under `parent` (a clsact hook) of device `index`."""
    payload = TCMSG.pack(0, index, 0, parent, 0)
    where = f"rtnetlink filters of device {index}"
    return _dump(RTM_GETTFILTER, TCMSG, payload, where, _filter)


def _link(buf: bytearray, start: int, end: int) -> Link:
    _, _, index, _, _ = IFINFO.unpack_from(buf, start)
    attrs = netlink.attributes(buf, start + IFINFO.size, end)
    xdp = attrs.get(IFLA_XDP)
    nested = netlink.attributes(xdp, 0, len(xdp)) if xdp is not None else {}
    return Link(index, netlink.text(attrs.get(IFLA_IFNAME)) or "", nested)


def _filter(buf: bytearray, start: int, end: int) -> Filter:
    _, _, handle, _, info = TCMSG.unpack_from(buf, start)
    attrs = netlink.attributes(buf, start + TCMSG.size, end)
    options = attrs.get(TCA_OPTIONS)
    nested = netlink.attributes(options, 0, len(options)) if options is not None else None
    return Filter(handle, info, netlink.text(attrs.get(TCA_KIND)), nested)


Parse = Callable[[bytearray, int, int], T]


def _dump(kind: int, header: struct.Struct, payload: bytes, where: str, parse: Parse[T]) -> list[T]:
    """Every reply of one dump, parsed; a dump the kernel marks interrupted is taken again,
    once, on a fresh socket (the old one still holds the rest of the first)."""
    for _ in range(2):
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
                sock.send(netlink.request(kind, payload))
                return list(_replies(sock, header, where, parse))
        except DumpInterrupted:
            continue
        except OSError as exc:
            raise KernelAccessError(where, explain_errno(exc.errno or errno.EIO)) from exc
    raise KernelAccessError(where, "dump interrupted twice")


def _replies(
    sock: socket.socket, header: struct.Struct, where: str, parse: Parse[T]
) -> Iterator[T]:
    """The replies that hold at least the family's fixed header, parsed batch by batch (the
    buffer is reused)."""
    count = 0
    for buf, bodies in netlink.batches(sock.recv_into, where):
        count += len(bodies)
        if count > MAX_REPLIES:
            raise KernelAccessError(where, f"more than {MAX_REPLIES} replies")
        yield from (parse(buf, start, end) for start, end in bodies if end - start >= header.size)
