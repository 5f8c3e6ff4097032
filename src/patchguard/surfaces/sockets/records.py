"""What the sockets surface records: one frozen dataclass per kind of fact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from patchguard.surfaces.base import RecordSet
from patchguard.surfaces.sockets.addresses import proc_form, spelled

Key = tuple[str | int, ...]  # (protocol, inode) or (protocol, local, remote) as /proc/net prints

# The views, by the kernel path each one takes.
PROC_NET = "proc_net"  # /proc/net/{tcp,tcp6,udp,udp6,raw,raw6,unix}: the *_seq_show functions
SOCK_DIAG = "sock_diag"  # NETLINK_SOCK_DIAG: inet_diag_dump / unix_diag_dump, no seq file
BPF_SOCK_ITER = "bpf_sock_iter"  # bpf_iter_tcp/udp/unix into a map: no seq file at all
BIND_PROBE = "bind_probe"  # bind(2) refused with EADDRINUSE: the kernel's bind hash

INET = ("tcp", "tcp6", "udp", "udp6")
RAW = ("raw", "raw6")
PROTOCOLS = (*INET, *RAW, "unix")


@dataclass(frozen=True)
class Owner:
    """A process holding the socket open (an fd in /proc/<pid>/fd names its inode)."""

    pid: int
    comm: str
    fds: int = 1


@dataclass(frozen=True)
class Netns:
    """A network namespace, by its nsfs inode; names are its /run/netns entries."""

    inode: int
    names: tuple[str, ...] = ()
    pids: int = 0  # processes in it (by /proc/<pid>/ns/net)
    own: bool = False  # patchguard's own

    @property
    def label(self) -> str:
        named = f" ({', '.join(self.names)})" if self.names else ""
        return f"net:[{self.inode}]{named}"


class SocketEntry(NamedTuple):
    """One socket as one view showed it: a row of a view, not a record (there are as many
    as sockets, so it is a tuple, built at C speed, with its address spelled only on demand).
    Identity is `key`."""

    protocol: str  # one of PROTOCOLS ("tcp"/"udp" alone for a port only the probe found)
    state: str  # LISTEN, ESTABLISHED, ... (udp/raw: UNCONN; unix: CONNECTED, ...)
    inode: int  # 0 for TIME_WAIT, request and orphaned sockets
    local_port: int | None = None  # inet only
    timewait: bool = False  # a TIME_WAIT mini socket (timer 3): not counted as in use
    local_addr: str | bytes = ""  # as the view holds it (addresses.spelled); unix: its name
    remote_addr: str | bytes = ""
    remote_port: int = 0

    @property
    def local(self) -> str:
        return spelled(self.protocol, self.local_addr, self.local_port)

    @property
    def remote(self) -> str:
        if self.protocol == "unix" or (not self.remote_addr and not self.remote_port):
            return ""
        return spelled(self.protocol, self.remote_addr, self.remote_port)

    @property
    def key(self) -> Key:
        # A socket inode names one socket; only sockets without one (TIME_WAIT, requests,
        # orphans) are told apart by their addresses, in /proc/net's form whichever view
        # read them.
        if self.inode or self.protocol == "unix":
            return (self.protocol, self.inode)
        local = proc_form(self.protocol, self.local_addr, self.local_port)
        return (self.protocol, local, proc_form(self.protocol, self.remote_addr, self.remote_port))

    @property
    def transport(self) -> str:
        return self.protocol.rstrip("6")

    @property
    def counted(self) -> bool:
        """Whether sockstat's `inuse` counts it: full sockets hashed by bind, listen or
        connect; not TIME_WAIT or request sockets, not TCP sockets only bound (CLOSE)."""
        if self.protocol.startswith("udp"):
            return True
        uncounted = ("SYN_RECV", "NEW_SYN_RECV", "CLOSE", "BOUND_INACTIVE")
        return not self.timewait and self.state not in uncounted


@dataclass(frozen=True)
class Listener:
    """A listening TCP or bound UDP/raw socket, with its owners: what the host exposes."""

    netns: int
    protocol: str
    local: str
    state: str
    inode: int
    owners: tuple[Owner, ...] = ()


@dataclass(frozen=True)
class NetnsViews:
    """What each view saw in one namespace, in numbers: says the views ran."""

    netns: Netns
    proc_net: int | None  # sockets in /proc/net; None where it could not be read
    sock_diag: int | None
    bpf_sock_iter: int | None
    probed_ports: int  # ports bind(2) was tried on (per transport summed); 0: not probed
    ports_in_use: int
    probe: str  # why the port space was or was not probed
    suspects: int  # sockets the first look disagreed on, before the re-read


@dataclass(frozen=True)
class HiddenSocket:
    """A socket (or a port in use) that views disagree on in both looks."""

    netns: Netns
    protocol: str  # tcp, udp... ("tcp"/"udp" alone for a probe-only port)
    local: str
    remote: str
    state: str
    inode: int
    seen_by: tuple[str, ...]
    missing_from: tuple[str, ...]
    owners: tuple[Owner, ...] = ()
    port: int | None = None


@dataclass(frozen=True)
class SocketRecords(RecordSet):
    """The sockets surface's records by kind."""

    namespaces: tuple[NetnsViews, ...] = ()
    listeners: tuple[Listener, ...] = ()
    hidden: tuple[HiddenSocket, ...] = ()
