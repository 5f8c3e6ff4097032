"""The sock_diag view: the kernel's socket tables dumped over NETLINK_SOCK_DIAG.

inet_diag (tcp, udp, raw; IPv4 and IPv6) and unix_diag walk the same hash tables the
/proc/net seq files walk, but through inet_diag_dump_icsk(), udp_dump(), raw_diag_dump() and
unix_diag_dump(), never through tcp4_seq_show() and its kin: a rootkit that filters the seq
files leaves this view alone unless it hooks the netlink path too.

The requests are pyroute2's encodings (inet_diag_req, unix_diag_req), stored once encoded
(diag_requests.py). The replies are unpacked here with struct from their fixed headers:
pyroute2's decoder costs about 40 us per socket, 400 ms at 10,000 sockets, twice the surface's
whole budget, and only the fixed header is used.
The netlink socket is the standard library's: it is created in the calling thread, so in the
network namespace that thread is in (netns.py), which pyroute2's sockets do not promise.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

from patchguard.kernel.errors import KernelAccessError, explain_errno
from patchguard.surfaces.sockets.procnet import UNIX_STATES, state_name
from patchguard.surfaces.sockets.records import SocketEntry

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP_INTR = 0x10
NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# struct inet_diag_msg: family, state, timer, retrans, sport, dport (network order), src,
# dst, if, cookie, expires, rqueue, wqueue, uid, inode
INET_MSG = struct.Struct("=BBBB2s2s16s16sIQIIIII")
UNIX_MSG = struct.Struct("=BBBBIQ")  # struct unix_diag_msg: family, type, state, pad, ino, cookie
# Every TCP state bit up to TCP_BOUND_INACTIVE (13), the pseudo state in which kernels since
# 6.7 dump TCP sockets only bound (older kernels ignore the bit).
ALL_STATES = (1 << 14) - 1
MAX_SOCKETS = 4_000_000  # per dump: memory stays bounded whatever the kernel sends
RECV_SIZE = 1 << 20
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


class DumpInterrupted(Exception):
    """The tables changed during the dump (NLM_F_DUMP_INTR): a fresh dump is needed."""


def request(protocol: str) -> bytes:
    """The dump request for one protocol: pyroute2's encoding of it, stored (diag_requests.py).
    Encoding them here imports pyroute2's sock_diag module, whose socket class brings asyncio
    and ssl: ~20 ms of every scan's CPU for seven constant messages."""
    from patchguard.surfaces.sockets.diag_requests import REQUESTS

    return REQUESTS[protocol]


def encoded_request(protocol: str) -> bytes:
    """The dump request for one protocol, encoded by pyroute2 (what diag_requests.py stores)."""
    from patchguard.kernel.pyroute2_modules import without_package_init

    without_package_init()
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
    from pyroute2.netlink.diag import inet_diag_req, unix_diag_req

    if protocol == "unix":
        msg = unix_diag_req()
        msg["udiag_states"] = ALL_STATES
        msg["udiag_show"] = 0
        msg["sdiag_family"] = socket.AF_UNIX
    else:
        family, proto = INET_DUMPS[protocol]
        msg = inet_diag_req()
        msg["sdiag_family"], msg["sdiag_protocol"] = family, proto
        msg["idiag_states"] = ALL_STATES
    msg["header"]["type"] = SOCK_DIAG_BY_FAMILY
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg.encode()
    return bytes(msg.data)


def store_requests() -> None:
    """Write diag_requests.py from this pyroute2 (after a change to a request)."""
    from pathlib import Path

    from patchguard.atomic import write_atomic

    rows = "".join(
        f'    "{p}": bytes.fromhex(\n{_hex_lines(encoded_request(p))}    ),\n' for p in DUMPED
    )
    body = (
        '"""The sock_diag dump requests as pyroute2 encodes them (written by\n'
        "diag.store_requests: do not edit; tests/unit/test_sockets_diag.py checks they are what\n"
        'pyroute2 encodes)."""\n\n'
        f"REQUESTS = {{\n{rows}}}\n"
    )
    write_atomic(Path(__file__).with_name("diag_requests.py"), body.encode())


def _hex_lines(data: bytes, width: int = 80) -> str:
    text = data.hex()
    return "".join(f'        "{text[i : i + width]}"\n' for i in range(0, len(text), width))


def _inet_entries(protocol: str, buf: bytearray, bodies: list[int]) -> list[SocketEntry]:
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
            unpack(buf, b) for b in bodies
        )
    ]


def _unix_entries(buf: bytearray, bodies: list[int]) -> list[SocketEntry]:
    found = []
    for body in bodies:
        _, _, state, _, inode, _ = UNIX_MSG.unpack_from(buf, body)
        name = "LISTEN" if state == TCP_LISTEN else UNIX_STATES.get(UNIX_DIAG_STATES.get(state, 0))
        found.append(SocketEntry("unix", name or f"state {state}", inode))
    return found


def _errno(buf: bytearray, at: int) -> int:
    return -int(struct.unpack_from("=i", buf, at)[0])


def _batches(sock: socket.socket, protocol: str) -> Iterator[tuple[bytearray, list[int]]]:
    """Each received buffer with the offsets of the socket messages in it, up to NLMSG_DONE
    (the buffer is reused: each batch is read before the next is asked for)."""
    buf = bytearray(RECV_SIZE)
    where = f"sock_diag {protocol}"
    while True:
        size, at = sock.recv_into(buf), 0
        bodies: list[int] = []
        while at + NLMSG.size <= size:
            length, kind, flags, _, _ = NLMSG.unpack_from(buf, at)
            if length < NLMSG.size:
                raise KernelAccessError(where, "malformed netlink reply")
            if kind == NLMSG_DONE:
                # A dump the kernel cannot make (no raw_diag built) ends at once with -errno.
                if length >= NLMSG.size + 4 and (err := _errno(buf, at + NLMSG.size)):
                    raise KernelAccessError(where, explain_errno(err))
                yield buf, bodies
                return
            if kind == NLMSG_ERROR:
                raise KernelAccessError(where, explain_errno(_errno(buf, at + NLMSG.size)))
            if flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted(protocol)
            bodies.append(at + NLMSG.size)
            at += (length + 3) & ~3
        yield buf, bodies


def _dump(sock: socket.socket, protocol: str) -> list[SocketEntry]:
    sock.send(request(protocol))
    entries: list[SocketEntry] = []
    for buf, bodies in _batches(sock, protocol):
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
