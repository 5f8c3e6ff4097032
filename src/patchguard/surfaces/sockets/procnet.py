"""Parsers of /proc/net/{tcp,tcp6,udp,udp6,raw,raw6,unix}: pure functions over text.

The inet files print each address as the kernel holds it, in host byte order words
(`%08X` of a __be32, four of them for IPv6) and the port as a host-order number; the unix
file prints the socket's flags, type, state, inode and name ("@" for an abstract name).
"""

from __future__ import annotations

from patchguard.surfaces.sockets.addresses import endpoint, joined
from patchguard.surfaces.sockets.records import SocketEntry

# include/net/tcp_states.h; udp and raw use ESTABLISHED (connected) and CLOSE (unconnected).
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",  # sock_diag only: a TCP socket bound, neither listening nor connected
}
BOUND_ONLY = ("CLOSE", "BOUND_INACTIVE")  # TCP states of a socket only bound
UNIX_STATES = {1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}
TIMEWAIT_TIMER = "03:"  # the tr column of a TIME_WAIT mini socket (get_timewait4_sock)
SO_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in the unix Flags column: a listening socket


_DATAGRAM_STATES = {**TCP_STATES, 1: "ESTABLISHED", 7: "UNCONN"}
# The st column as printed ("%02X"), straight to a name: no int() per line.
_HEX_STATES = {
    False: {f"{n:02X}": name for n, name in TCP_STATES.items()},
    True: {f"{n:02X}": name for n, name in _DATAGRAM_STATES.items()},
}


def state_name(protocol: str, state: int) -> str:
    names = _DATAGRAM_STATES if protocol.startswith(("udp", "raw")) else TCP_STATES
    return names.get(state) or f"state {state}"


def _port(field: str) -> int:
    """The port of "0100007F:1F90", after checking the whole field is address:port in hex."""
    if len(field) not in (13, 37) or field[-5] != ":":
        raise ValueError(f"not an address:port: {field[:60]!r}")
    int(field[:-5], 16)
    return int(field[-4:], 16)


def _inet_line(protocol: str, states: dict[str, str], line: str) -> SocketEntry:
    fields = line.split()
    if len(fields) < 10 or not fields[0].endswith(":"):
        raise ValueError(f"not a socket line: {line.strip()[:80]!r}")
    try:
        local, remote = fields[1], fields[2]
        port, remote_port, inode = _port(local), _port(remote), int(fields[9])
    except ValueError as exc:
        raise ValueError(f"{exc} in {line.strip()[:80]!r}") from None
    state = states.get(fields[3]) or f"state {fields[3]}"
    timewait = fields[5].startswith(TIMEWAIT_TIMER)
    return SocketEntry(protocol, state, inode, port, timewait, local, remote, remote_port)


def parse_inet(protocol: str, text: str) -> list[SocketEntry]:
    """/proc/net/tcp and kin: a header line, then one line per socket."""
    lines = text.splitlines()
    if not lines or "local_address" not in lines[0]:
        raise ValueError("no header line with local_address")
    states = _HEX_STATES[protocol.startswith(("udp", "raw"))]
    return [_inet_line(protocol, states, line) for line in lines[1:] if line.strip()]


def _unix_line(line: str) -> SocketEntry:
    fields = line.split(maxsplit=7)
    if len(fields) < 7 or not fields[0].endswith(":"):
        raise ValueError(f"not a unix socket line: {line.strip()[:80]!r}")
    flags, state = int(fields[3], 16), int(fields[5], 16)
    name = UNIX_STATES.get(state, f"state {state}")
    state_text = "LISTEN" if flags & SO_ACCEPTCON else name
    path = fields[7] if len(fields) == 8 else ""
    return SocketEntry("unix", state_text, int(fields[6]), local_addr=path)


def parse_unix(text: str) -> list[SocketEntry]:
    """/proc/net/unix: Num RefCount Protocol Flags Type St Inode [Path]."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Num"):
        raise ValueError("no header line starting with Num")
    return [_unix_line(line) for line in lines[1:] if line.strip()]


def parse_sockstat(text: str) -> dict[str, int]:
    """/proc/net/sockstat and sockstat6: "TCP: inuse 3 orphan 0 ..." -> {"tcp": 3}; the
    kernel's own count of hashed sockets, kept by the hashing code, not by any seq file."""
    names = {"TCP": "tcp", "UDP": "udp", "TCP6": "tcp6", "UDP6": "udp6"}
    found: dict[str, int] = {}
    for line in text.splitlines():
        label, _, rest = line.partition(":")
        fields = rest.split()
        if label in names and len(fields) >= 2 and fields[0] == "inuse":
            if not fields[1].isdigit():
                raise ValueError(f"not a count: {line[:80]!r}")
            found[names[label]] = int(fields[1])
    return found


def parse(protocol: str, text: str) -> list[SocketEntry]:
    return parse_unix(text) if protocol == "unix" else parse_inet(protocol, text)


__all__ = [
    "TCP_STATES",
    "endpoint",
    "joined",
    "parse",
    "parse_inet",
    "parse_sockstat",
    "parse_unix",
    "state_name",
]
