"""Netlink dumps over the standard library's sockets: one request, the replies up to
NLMSG_DONE, and the attributes (struct nlattr) of a reply walked with struct.

sock_diag and rtnetlink are read this way rather than through pyroute2: importing pyroute2's
netlink core loads asyncio, ssl, multiprocessing and (for IPRoute) unittest.mock, ~90 ms of
CPU a scan spent before reading a single socket or device, for a handful of fixed headers and
attributes. The socket is created in the calling thread, so in the network namespace that
thread is in (surfaces/ebpf/network.py, surfaces/sockets/netns.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from patchguard.kernel.errors import KernelAccessError, explain_errno

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA = struct.Struct("=HH")  # len, type
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
RECV_SIZE = 1 << 20
U32 = struct.Struct("=I")

Body = tuple[int, int]  # [start, end) of one message's payload in the buffer
RecvInto = Callable[[bytearray], int]  # a netlink socket's recv_into


class DumpInterrupted(Exception):
    """The tables changed during the dump (NLM_F_DUMP_INTR): a fresh dump is needed."""


def request(kind: int, payload: bytes) -> bytes:
    """A dump request: the netlink header and the family's fixed header (`payload`)."""
    return NLMSG.pack(NLMSG.size + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP, 0, 0) + payload


def batches(recv_into: RecvInto, where: str) -> Iterator[tuple[bytearray, list[Body]]]:
    """Each received buffer with the payloads of the messages in it, up to NLMSG_DONE (the
    buffer is reused: each batch is read before the next is asked for). An error reply, or a
    DONE carrying -errno (a dump the kernel cannot make), is a KernelAccessError."""
    buf = bytearray(RECV_SIZE)
    while True:
        size, at = recv_into(buf), 0
        bodies: list[Body] = []
        while at + NLMSG.size <= size:
            length, kind, flags, _, _ = NLMSG.unpack_from(buf, at)
            if length < NLMSG.size or at + length > size:
                raise KernelAccessError(where, "malformed netlink reply")
            if kind == NLMSG_DONE:
                if length >= NLMSG.size + 4 and (err := _errno(buf, at + NLMSG.size)):
                    raise KernelAccessError(where, explain_errno(err))
                yield buf, bodies
                return
            if kind == NLMSG_ERROR:
                raise KernelAccessError(where, explain_errno(_errno(buf, at + NLMSG.size)))
            if flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted(where)
            bodies.append((at + NLMSG.size, at + length))
            at += (length + 3) & ~3
        yield buf, bodies


def attributes(buf: bytes | bytearray, start: int, end: int) -> dict[int, bytes]:
    """The attributes in [start, end), by type (the last of a repeated type wins)."""
    found = {}
    while start + NLA.size <= end:
        length, kind = NLA.unpack_from(buf, start)
        if length < NLA.size or start + length > end:
            break  # a truncated attribute ends the walk, as nla_ok() does
        found[kind & NLA_TYPE_MASK] = bytes(buf[start + NLA.size : start + length])
        start += (length + 3) & ~3
    return found


def u32(value: bytes | None) -> int | None:
    """A u32 attribute's value (None: absent or not four bytes)."""
    return U32.unpack(value)[0] if value is not None and len(value) == U32.size else None


def text(value: bytes | None) -> str | None:
    """A NUL-terminated string attribute (IFLA_IFNAME, TCA_KIND)."""
    return value.split(b"\0", 1)[0].decode(errors="replace") if value is not None else None


def _errno(buf: bytearray, at: int) -> int:
    return -int(struct.unpack_from("=i", buf, at)[0])
