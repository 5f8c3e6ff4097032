"""The bind probe: which ports the kernel's bind hash holds, asked port by port, as
unhide-tcp does.

bind(2) of a fresh socket to [::]:port with IPV6_V6ONLY off conflicts with every socket of
the same transport bound to that port in this network namespace, IPv4 or IPv6, listening,
connected (a connect() binds its local port) or TIME_WAIT, and fails with EADDRINUSE. It
goes through inet_csk_get_port() / udp_lib_get_port(), never through a seq file or
sock_diag, so a port a rootkit hides from both still refuses the bind. The probing socket is
closed at once; a port that accepted it is free again.

Cost: about 3 us per port, 200 ms for the 65,535 ports of one transport. So the whole port
space is probed only where it is needed (probe_plan): where the kernel's own count of sockets
in use (sockstat `inuse`) is higher than what the views list, which a socket hidden from the
views makes it; or on request (mode "all").
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

PORTS = range(1, 65536)
IPV6_V6ONLY = getattr(socket, "IPV6_V6ONLY", 26)
TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def _probing_socket(kind: int) -> tuple[socket.socket, str]:
    try:
        sock = socket.socket(socket.AF_INET6, kind)
    except OSError as exc:
        if exc.errno != errno.EAFNOSUPPORT:
            raise
        return socket.socket(socket.AF_INET, kind), "0.0.0.0"  # no IPv6: IPv4 is all there is
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_V6ONLY, 0)
    return sock, "::"


def ports_in_use(transport: str, ports: Iterable[int] = PORTS) -> set[int]:
    """The ports whose bind(2) fails with EADDRINUSE, in the calling thread's namespace."""
    kind, used = TYPES[transport], set()
    for port in ports:
        sock, wildcard = _probing_socket(kind)
        try:
            sock.bind((wildcard, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                used.add(port)
        finally:
            sock.close()
    return used


def probe_plan(mode: str, inuse: dict[str, int], listed: dict[str, int]) -> dict[str, str]:
    """transport -> why its port space is probed (absent: not probed), from the sockstat
    count and the number of counted sockets the views list, per protocol."""
    if mode == "none":
        return {}
    if mode == "all":
        return dict.fromkeys(TYPES, "every port, as asked")
    plan = {}
    for transport in TYPES:
        short = [
            f"{p}: sockstat says {inuse[p]} in use, the views list {listed.get(p, 0)}"
            for p in (transport, transport + "6")
            if p in inuse and inuse[p] > listed.get(p, 0)
        ]
        if short:
            plan[transport] = "; ".join(short)
    return plan


__all__ = ["PORTS", "ports_in_use", "probe_plan"]
