"""Which socket holds a port no view lists: the unlisted socket fds of processes, asked.

For a port only the bind probe finds, the candidates are the sockets processes hold that no
view lists. Each is copied into this process with pidfd_getfd(2) (5.6+; root passes its
ptrace check) and asked getsockname(2), SO_ACCEPTCONN and, for TCP, TCP_INFO's state. A TCP
socket only bound (CLOSE, not listening) explains its port on kernels whose sock_diag cannot
dump such sockets (before 6.7); any other socket on the port is what the views hide, and its
holders are named. The copies are closed at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

NR_PIDFD_OPEN, NR_PIDFD_GETFD = 434, 438  # x86_64 and every architecture since 5.3 / 5.6
TCP_CLOSE = 7
TCP_INFO = getattr(socket, "TCP_INFO", 11)
SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", 30)
TRANSPORTS = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class HeldSocket:
    inode: int
    transport: str
    port: int
    bound_only: bool  # TCP, bound, neither listening nor connected


def _copy(pid: int, fd: int) -> int:
    """This process's copy of fd `fd` of process `pid` (OSError where the kernel refuses)."""
    pidfd = _libc.syscall(NR_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    try:
        copy = _libc.syscall(NR_PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return int(copy)
    finally:
        os.close(pidfd)


def _asked(sock: socket.socket, inode: int) -> HeldSocket | None:
    transport = TRANSPORTS.get(sock.type)
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or transport is None:
        return None
    port = sock.getsockname()[1]
    bound_only = transport == "tcp" and not sock.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN)
    if bound_only:
        bound_only = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)[0] == TCP_CLOSE
    return HeldSocket(inode, transport, port, bound_only)


def held_socket(pid: int, fd: int, inode: int) -> HeldSocket | None:
    """What the socket behind a process's fd is bound to; None for other kinds of socket."""
    copy = _copy(pid, fd)
    try:
        sock = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None
    with sock:
        return _asked(sock, inode)


def holders(
    candidates: Iterable[tuple[int, int, int]], wanted: set[tuple[str, int]]
) -> dict[tuple[str, int], list[HeldSocket]]:
    """(transport, port) -> the held sockets bound there, of candidates (inode, pid, fd)."""
    found: dict[tuple[str, int], list[HeldSocket]] = {}
    for inode, pid, fd in candidates:
        held = None
        with contextlib.suppress(OSError):  # closed or exited since, or refused to us
            held = held_socket(pid, fd, inode)
        if held is not None and (held.transport, held.port) in wanted:
            found.setdefault((held.transport, held.port), []).append(held)
    return found


__all__ = ["HeldSocket", "held_socket", "holders"]
