"""The sock_diag view: the kernel's socket tables dumped over NETLINK_SOCK_DIAG.

inet_diag (tcp, udp, raw; IPv4 and IPv6) and unix_diag walk the same hash tables the
/proc/net seq files walk, but through inet_diag_dump_icsk(), udp_dump(), raw_diag_dump() and
unix_diag_dump(), never through tcp4_seq_show() and its kin: a rootkit that filters the seq
files leaves this view alone unless it hooks the netlink path too.

The requests (struct inet_diag_req_v2, struct unix_diag_req) are packed, and the replies
unpacked, with struct from their fixed headers (kernel/netlink.py): pyroute2's decoder costs
about 40 us per socket, 400 ms at 10,000 sockets, twice the surface's whole budget, and its
import ~60 ms of CPU, for two fixed headers. The netlink socket is the standard library's: it
is created in the calling thread, so in the network namespace that thread is in (netns.py),
which pyroute2's sockets do not promise.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct

from patchguard.kernel import netlink
from patchguard.kernel.errors import KernelAccessError, explain_errno
from patchguard.kernel.netlink import Body, DumpInterrupted
from patchguard.surfaces.sockets.procnet import UNIX_STATES, state_name
from patchguard.surfaces.sockets.records import SocketEntry

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then the socket id (ports,
# addresses, interface, cookie: 48 bytes, zero to dump every socket)
INET_REQ = struct.Struct("=BBBBI48x")
# struct unix_diag_req: family, protocol, pad, states, ino, show, cookie
UNIX_REQ = struct.Struct("=BBHIIIQ")
# struct inet_diag_msg: family, state, timer, retrans, sport, dport (network order), src,
# dst, if, cookie, expires, rqueue, wqueue, uid, inode
INET_MSG = struct.Struct("=BBBB2s2s16s16sIQIIIII")
UNIX_MSG = struct.Struct("=BBBBIQ")  # struct unix_diag_msg: family, type, state, pad, ino, cookie
# Every TCP state bit up to TCP_BOUND_INACTIVE (13), the pseudo state in which kernels since
# 6.7 dump TCP sockets only bound (older kernels ignore the bit).
ALL_STATES = (1 << 14) - 1
MAX_SOCKETS = 4_000_000  # per dump: memory stays bounded whatever the kernel sends
UNIX_DIAG_STATES = {1: 3, 2: 2, 7: 1}  # sk_state -> the /proc/net/unix St column
TCP_LISTEN = 10
TIMEWAIT = 3  # idiag_timer of a TIME_WAIT mini socket (inet_twsk_diag_fill)

# protocol name -> (family, IPPROTO)
INET_DUMPS = {
    "tcp": (socket.AF_INET, socket.IPPROTO_TCP),
    "tcp6": (socket.AF_INET6, socket.IPPROTO_TCP),
    "udp": (socket.AF_INET, socket.IPPROTO_UDP),
    "udp6": (socket.AF_INET6, socket.IPPROTO_UDP),
    "raw": (socket.AF_INET, socket.IPPROTO_RAW),
    "raw6": (socket.AF_INET6, socket.IPPROTO_RAW),
}
DUMPED = (*INET_DUMPS, "unix")


@functools.cache
def request(protocol: str) -> bytes:
    """The dump request for one protocol: every socket in every state, no extensions."""
    if protocol == "unix":
        body = UNIX_REQ.pack(socket.AF_UNIX, 0, 0, ALL_STATES, 0, 0, 0)
    else:
        family, proto = INET_DUMPS[protocol]
        body = INET_REQ.pack(family, proto, 0, 0, ALL_STATES)
    return netlink.request(SOCK_DIAG_BY_FAMILY, body)


def _inet_entries(protocol: str, buf: bytearray, bodies: list[Body]) -> list[SocketEntry]:
    """The rows of one batch of inet_diag_msg (one comprehension: there is one per socket)."""
    names = {n: state_name(protocol, n) for n in range(256)}
    unpack = INET_MSG.unpack_from
    return [
        SocketEntry(
            protocol,
            names[st],
            ino,
            sp[0] << 8 | sp[1],
            tm == TIMEWAIT,
            src,
            dst,
            dp[0] << 8 | dp[1],
        )
        for _, st, tm, _, sp, dp, src, dst, _, _, _, _, _, _, ino in (
            unpack(buf, b) for b, _ in bodies
        )
    ]


def _unix_entries(buf: bytearray, bodies: list[Body]) -> list[SocketEntry]:
    found = []
    for body, _ in bodies:
        _, _, state, _, inode, _ = UNIX_MSG.unpack_from(buf, body)
        name = "LISTEN" if state == TCP_LISTEN else UNIX_STATES.get(UNIX_DIAG_STATES.get(state, 0))
        found.append(SocketEntry("unix", name or f"state {state}", inode))
    return found


def _dump(sock: socket.socket, protocol: str) -> list[SocketEntry]:
    sock.send(request(protocol))
    entries: list[SocketEntry] = []
    for buf, bodies in netlink.batches(sock.recv_into, f"sock_diag {protocol}"):
        if protocol == "unix":
            entries += _unix_entries(buf, bodies)
        else:
            entries += _inet_entries(protocol, buf, bodies)
        if len(entries) > MAX_SOCKETS:
            raise KernelAccessError(f"sock_diag {protocol}", f"more than {MAX_SOCKETS} sockets")
    return entries


def dump(protocol: str) -> list[SocketEntry]:
    """Every socket of one protocol in the calling thread's network namespace. A dump the
    kernel marks interrupted is taken again, once."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
            try:
                return _dump(sock, protocol)
            except DumpInterrupted:
                pass
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
            return _dump(sock, protocol)
    except DumpInterrupted:
        raise KernelAccessError(f"sock_diag {protocol}", "dump interrupted twice") from None
    except OSError as exc:
        reason = explain_errno(exc.errno or errno.EIO)
        raise KernelAccessError(f"sock_diag {protocol}", reason) from exc


__all__ = ["DUMPED", "INET_DUMPS", "dump", "request"]
