"""Sockets, seen four ways: the /proc/net seq files, sock_diag netlink, the BPF socket
iterators (written into a map, not a seq file), and bind(2) probing of the port space, in
every network namespace.

A rootkit hides a backdoor's socket by filtering tcp4_seq_show() and its kin (so netstat and
everything reading /proc/net miss it), or the sock_diag dump too (so `ss` misses it). The
kernel still holds the socket in its hash tables: the other views list it, and the bind hash
refuses a bind to its port. A socket one view shows and another hides, in two looks taken one
after the other (a socket opening or closing between views is not a finding), is a high
finding naming protocol, address and port, namespace, owning processes (the socket fds the
BPF task-file iterator walks, or /proc/<pid>/fd inodes) and which view hid it.

Namespaces: every one a process is in (/proc/<pid>/ns/net) or a name keeps (/run/netns),
deduplicated by inode; each is read from a short-lived thread that entered it (netns.py).

Modules: records (what is recorded), addresses (spelling them), procnet (the /proc/net
parsers), diag (sock_diag dumps), sock_iter (the BPF socket iterators), probe (the bind probe
and when it runs), holders (the socket behind a port only the probe finds), owners (fds and
namespaces from /proc), fd_iter (socket fds through the task-file iterator), netns (running a
read inside a namespace), crossview (the comparison, pure), collect, assess, surface
(SocketsSurface).
"""

from __future__ import annotations

from patchguard.surfaces.sockets.assess import assess_hidden, shown
from patchguard.surfaces.sockets.crossview import Look, Suspect, disagreements, settle
from patchguard.surfaces.sockets.records import (
    BIND_PROBE,
    BPF_SOCK_ITER,
    PROC_NET,
    SOCK_DIAG,
    HiddenSocket,
    Listener,
    Netns,
    NetnsViews,
    Owner,
    SocketEntry,
    SocketRecords,
)
from patchguard.surfaces.sockets.surface import SocketsSurface

__all__ = [
    "BIND_PROBE",
    "BPF_SOCK_ITER",
    "PROC_NET",
    "SOCK_DIAG",
    "HiddenSocket",
    "Listener",
    "Look",
    "Netns",
    "NetnsViews",
    "Owner",
    "SocketEntry",
    "SocketRecords",
    "SocketsSurface",
    "Suspect",
    "assess_hidden",
    "disagreements",
    "settle",
    "shown",
]
