"""Who holds each socket, and which network namespaces exist: read from /proc/<pid>.

A socket fd reads `socket:[INODE]` through readlink of /proc/<pid>/fd/<n>; the inode is the
one every socket view prints, so it ties a socket to its processes (one Owner per process,
with its fd count). /proc/<pid>/ns/net and /run/netns/<name> are nsfs files whose inode names
a network namespace; the same inode from several places is one namespace.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from patchguard.kernel.errors import oserror_reason
from patchguard.surfaces.sockets.records import Netns, Owner

SOCKET_LINK = "socket:["
RUN_NETNS = "/run/netns"


@dataclass
class OwnerMap:
    """inode -> owners, pid -> netns inode, and the processes whose fds could not be read."""

    owners: dict[int, list[Owner]] = field(default_factory=dict)
    netns_of: dict[int, int] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)  # pid -> why
    comms: dict[int, str] = field(default_factory=dict)
    fd_of: dict[int, tuple[int, int]] = field(default_factory=dict)  # inode -> one (pid, fd)

    def of(self, inode: int) -> tuple[Owner, ...]:
        return tuple(self.owners.get(inode, ())) if inode else ()


def _comm(proc: Path, pid: int) -> str:
    try:
        return (proc / str(pid) / "comm").read_text(errors="replace").rstrip("\n")
    except OSError:
        return ""


def _socket_fds(fd_dir: str) -> dict[int, list[int]]:
    """inode -> the fd numbers of a process that hold that socket."""
    found: dict[int, list[int]] = {}
    # readlink relative to the open directory: the kernel resolves one name, not five.
    dir_fd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(dir_fd):
            try:
                link = os.readlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # closed since the listing; any other error: the fds are closed to us
            if link.startswith(SOCKET_LINK):
                found.setdefault(int(link[len(SOCKET_LINK) : -1]), []).append(int(name))
    finally:
        os.close(dir_fd)
    return found


def _read_netns(m: OwnerMap, proc: Path, pid: int) -> None:
    try:
        m.netns_of[pid] = os.stat(proc / str(pid) / "ns" / "net").st_ino
    except FileNotFoundError:
        pass  # exited (or a tree without it): nothing to say
    except OSError as exc:
        # Closed to us: a namespace only such processes are in would be missed, so say so.
        m.unreadable[pid] = f"ns/net: {oserror_reason(exc)}"


def _add(m: OwnerMap, proc: Path, pid: int, inodes: dict[int, list[int]]) -> None:
    comm = m.comms.get(pid)
    if comm is None:
        comm = m.comms[pid] = _comm(proc, pid)
    for inode, fds in inodes.items():
        m.owners.setdefault(inode, []).append(Owner(pid, comm, len(fds)))
        m.fd_of.setdefault(inode, (pid, fds[0]))


def _read_process(m: OwnerMap, proc: Path, pid: int) -> None:
    _read_netns(m, proc, pid)
    try:
        inodes = _socket_fds(f"{proc}/{pid}/fd")
    except OSError as exc:
        if (proc / str(pid)).exists():
            m.unreadable.setdefault(pid, f"fd: {oserror_reason(exc)}")
        return
    if inodes:
        _add(m, proc, pid, inodes)


def _from_walk(m: OwnerMap, proc: Path, fds: Iterable[tuple[int, int, int]]) -> None:
    by_pid: dict[int, dict[int, list[int]]] = {}
    for inode, tgid, fd in fds:
        by_pid.setdefault(tgid, {}).setdefault(inode, []).append(fd)
    for pid in sorted(by_pid):
        if pid not in m.netns_of:
            _read_netns(m, proc, pid)  # hidden from the /proc listing, found by its files
        _add(m, proc, pid, by_pid[pid])


def read_owners(proc: Path, fds: Iterable[tuple[int, int, int]] | None = None) -> OwnerMap:
    """Every process's socket fds and network namespace, from /proc (a captured tree has
    none: its map is empty); the fds from `fds` instead, (inode, tgid, fd) as the BPF
    task-file iterator walked them (fd_iter.py), where it could."""
    m = OwnerMap()
    pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    if fds is not None:
        for pid in pids:
            _read_netns(m, proc, pid)
        _from_walk(m, proc, fds)
        return m
    for pid in pids:
        _read_process(m, proc, pid)
    return m


def named_netns(run_netns: Path) -> dict[int, list[str]]:
    """The namespaces `ip netns add` keeps alive by a bind mount: inode -> names."""
    found: dict[int, list[str]] = {}
    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        return found  # no /run/netns: no named namespace
    for name in names:
        try:
            found.setdefault(os.stat(run_netns / name).st_ino, []).append(name)
        except OSError:
            continue  # removed since the listing, or not a namespace file
    return found


def namespaces(m: OwnerMap, named: dict[int, list[str]], own: int) -> list[Netns]:
    """Every namespace a process is in or a name keeps, deduplicated by inode, own first."""
    pids = Counter(m.netns_of.values())
    inodes = sorted(set(pids) | set(named) | {own}, key=lambda i: (i != own, i))
    return [Netns(i, tuple(named.get(i, ())), pids.get(i, 0), i == own) for i in inodes]


__all__ = ["OwnerMap", "named_netns", "namespaces", "read_owners"]
