"""Reading the sockets surface: every network namespace, each view inside it, a second look
at whatever the views disagree on, and the records of what survived it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from patchguard.kernel.bpf.peers import remember_own
from patchguard.kernel.errors import KernelAccessError, oserror_reason
from patchguard.safe_read import read_up_to
from patchguard.surfaces.processes import in_child_pid_namespace
from patchguard.surfaces.reading import Reading
from patchguard.surfaces.sockets import diag, netns, probe, procnet
from patchguard.surfaces.sockets.crossview import (
    Key,
    Look,
    Suspect,
    counted,
    disagreements,
    settle,
)
from patchguard.surfaces.sockets.fd_iter import FdIterator
from patchguard.surfaces.sockets.holders import HeldSocket, holders
from patchguard.surfaces.sockets.owners import (
    RUN_NETNS,
    OwnerMap,
    named_netns,
    namespaces,
    read_owners,
)
from patchguard.surfaces.sockets.records import (
    BIND_PROBE,
    BPF_SOCK_ITER,
    PROC_NET,
    PROTOCOLS,
    SOCK_DIAG,
    HiddenSocket,
    Listener,
    Netns,
    NetnsViews,
    Owner,
    SocketEntry,
)
from patchguard.surfaces.sockets.sock_iter import SocketIterators

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

NAME = "sockets"
MAX_FILE = 256 << 20  # a /proc/net file larger than this is refused, not read into memory
SOCKSTAT = ("sockstat", "sockstat6")
NOT_LIVE = "only the live kernel answers sock_diag, bpf(2), bind(2) and setns(2)"
LISTENING = ("LISTEN", "UNCONN")


@dataclass
class NsLook:
    """One look at one namespace, with what could not be read and the probe's plan."""

    look: Look = field(default_factory=Look)
    gaps: list[tuple[str, str]] = field(default_factory=list)
    inuse: dict[str, int] = field(default_factory=dict)
    plan: dict[str, str] = field(default_factory=dict)
    unprobed: str = "not needed: sockstat's counts match the views"


def _read_bounded(path: str) -> str:
    """The whole file, a MiB at a time (safe_read.read_up_to). One read of MAX_FILE + 1
    reserved 256 MiB of address space every time, which a host with strict overcommit
    (vm.overcommit_memory=2) may refuse; the kernel hands a /proc/net file out a page per
    read(2) either way."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = read_up_to(fd, MAX_FILE)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise ValueError(f"larger than {MAX_FILE >> 20} MiB")
    return data.decode(errors="replace")


def _read_proc(ns: NsLook, net_dir: str, protocols: Sequence[str] = PROTOCOLS) -> None:
    for protocol in protocols:
        path = f"{net_dir}/{protocol}"
        try:
            ns.look.add(PROC_NET, protocol, procnet.parse(protocol, _read_bounded(path)))
        except OSError as exc:
            ns.gaps.append((f"{PROC_NET} {protocol}", f"{path}: {oserror_reason(exc)}"))
        except ValueError as exc:
            ns.gaps.append((f"{PROC_NET} {protocol}", f"{path}: unexpected content: {exc}"))


def _read_diag(ns: NsLook, protocols: Sequence[str]) -> None:
    for protocol in (p for p in protocols if p in diag.DUMPED):
        try:
            ns.look.add(SOCK_DIAG, protocol, diag.dump(protocol))
        except KernelAccessError as exc:
            ns.gaps.append((f"{SOCK_DIAG} {protocol}", str(exc)))


def _sockstat(net_dir: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for name in SOCKSTAT:
        try:
            found.update(procnet.parse_sockstat(_read_bounded(f"{net_dir}/{name}")))
        except (OSError, ValueError):
            continue  # no count: the plan then probes nothing for it
    return found


def _listed(look: Look) -> dict[str, int]:
    """protocol -> counted sockets in the fullest view."""
    found: dict[str, int] = {}
    for view in look.sockets:
        for protocol, n in counted(look, view).items():
            found[protocol] = max(found.get(protocol, 0), n)
    return found


def _probe(ns: NsLook, ports: dict[str, list[int]]) -> None:
    for transport, asked in ports.items():
        try:
            ns.look.ports[transport] = probe.ports_in_use(transport, asked)
        except OSError as exc:
            ns.gaps.append((f"bind probe {transport}", oserror_reason(exc)))
            continue
        ns.look.probed[transport] = len(asked)


def _protocols_of(suspects: dict[Key, Suspect]) -> list[str]:
    """What a second look reads again: the suspects' protocols (both families of a port the
    probe alone found, whose listings decide whether it is listed)."""
    wanted: set[str] = set()
    for s in suspects.values():
        e = s.entry
        wanted |= {e.transport, e.transport + "6"} if s.seen_by == (BIND_PROBE,) else {e.protocol}
    return [p for p in PROTOCOLS if p in wanted]


def _read_iterators(ns: NsLook, iters: SocketIterators | None, protocols: Sequence[str]) -> None:
    if iters is None:
        return
    for target in iters.links:
        wanted = [p for p in protocols if p.rstrip("6") == target]
        if not wanted:
            continue
        try:
            walked = iters.walk(target)
        except (KernelAccessError, OSError) as exc:
            ns.gaps.append((f"{BPF_SOCK_ITER} {target}", str(exc)))
            continue
        for protocol in wanted:
            ns.look.add(BPF_SOCK_ITER, protocol, [e for e in walked if e.protocol == protocol])


def look_live(
    mode: str, iters: SocketIterators | None = None, suspects: dict[Key, Suspect] | None = None
) -> NsLook:
    """Every view of the calling thread's namespace. A first look probes the port space as
    the plan says; a second look reads only the suspects' protocols and probes only their
    ports."""
    ns, net_dir = NsLook(), netns.THREAD_NET
    protocols = PROTOCOLS if suspects is None else _protocols_of(suspects)
    before = _sockstat(net_dir)
    _read_proc(ns, net_dir, protocols)
    _read_diag(ns, protocols)
    _read_iterators(ns, iters, protocols)
    after = _sockstat(net_dir)
    # A socket counted in both reads of sockstat was there while the views were read.
    ns.inuse = {p: min(n, after.get(p, n)) for p, n in before.items()}
    if suspects is None:
        _probe_as_planned(ns, mode)
    else:
        _probe(ns, _suspect_ports(suspects))
    return ns


def _probe_as_planned(ns: NsLook, mode: str) -> None:
    ns.plan = probe.probe_plan(mode, ns.inuse, _listed(ns.look))
    if mode == "none":
        ns.unprobed = "not probed: probe mode none"
    _probe(ns, {transport: list(probe.PORTS) for transport in ns.plan})


def _suspect_ports(suspects: dict[Key, Suspect]) -> dict[str, list[int]]:
    ports: dict[str, list[int]] = {}
    for s in suspects.values():
        if s.entry.local_port and s.entry.transport in probe.TYPES:
            ports.setdefault(s.entry.transport, []).append(s.entry.local_port)
    return ports


def look_captured(net_dir: str) -> NsLook:
    ns = NsLook(unprobed="not probed: a captured tree")
    _read_proc(ns, net_dir)
    return ns


# --- namespaces ---------------------------------------------------------------------------------


def _entry_paths(ns: Netns, owners: OwnerMap, proc: Path) -> list[str]:
    """Files that open this namespace: its /run/netns names, then a few of its processes."""
    paths = [f"{RUN_NETNS}/{name}" for name in ns.names]
    pids = [pid for pid, inode in owners.netns_of.items() if inode == ns.inode]
    return paths + [f"{proc}/{pid}/ns/net" for pid in sorted(pids)[:3]]


def _in(ns: Netns, paths: list[str], work: Callable[[], NsLook]) -> NsLook:
    if ns.own:
        return work()
    last: KernelAccessError | None = None
    for path in paths:
        try:
            return netns.run_in(path, ns.inode, work)
        except KernelAccessError as exc:
            last = exc  # that process exited, or its namespace is closed to us: next one
    raise last or KernelAccessError(ns.label, "no file opens it any more")


# --- records ------------------------------------------------------------------------------------


@dataclass
class _Reading(Reading):
    owners: OwnerMap = field(default_factory=OwnerMap)
    sockets: int = 0
    iterators: SocketIterators | None = None
    fd_iterator: FdIterator | None = None
    listed_inodes: set[int] = field(default_factory=set)  # by any view, in any namespace
    confirmed: list[tuple[Netns, Suspect]] = field(default_factory=list)


def _open_fd_iterator(r: _Reading) -> None:
    """The task-file iterator for the owner map, where it can run; /proc/<pid>/fd otherwise
    (no gap: that read is complete, only slower). Its tgids are the initial pid namespace's,
    so in a child one /proc is read."""
    status = r.optional("/proc/self/status")
    if status is not None and in_child_pid_namespace(status):
        return
    try:
        r.fd_iterator = FdIterator(r.kernel.vmlinux_btf)
    except (KernelAccessError, OSError):
        return
    r.kernel.own_prog_ids.update(r.fd_iterator.prog_ids)
    r.kernel.own_map_ids.update(r.fd_iterator.map_ids)
    remember_own(r.fd_iterator.prog_ids)  # its tag, for another patchguard's copy of it


def _open_iterators(r: _Reading) -> None:
    _open_fd_iterator(r)
    try:
        r.iterators = SocketIterators.open(r.kernel.vmlinux_btf)
    except (KernelAccessError, OSError) as exc:
        r.gap("BPF socket iterators", str(exc))
        return
    # Our own programs and maps: the ebpf surface, collected beside this one, leaves them out.
    r.kernel.own_prog_ids.update(r.iterators.prog_ids)
    r.kernel.own_map_ids.update(r.iterators.map_ids)
    remember_own(r.iterators.prog_ids)
    for target, why in r.iterators.refused.items():
        r.gap(f"BPF socket iterator {target}", why)


def _gaps(r: _Reading, ns: Netns, look: NsLook) -> None:
    for what, reason in look.gaps:
        r.gap(f"{what} in {ns.label}", reason)


def _count(r: _Reading, look: Look) -> None:
    """Sockets any view listed, and the TIME_WAIT ones of the view that listed the most."""
    r.sockets += len(set().union(*look.sockets.values()))
    r.sockets += max(look.timewaits.values(), default=0)


def _listeners(r: _Reading, ns: Netns, look: Look) -> None:
    seen: dict[Key, SocketEntry] = {}
    for entries in look.sockets.values():
        for key, e in entries.items():
            if e.state in LISTENING and not e.timewait and key not in seen:
                seen[key] = e
    for e in sorted(seen.values(), key=lambda e: (e.protocol, e.local_port or 0, e.local)):
        owners = r.owners.of(e.inode)
        r.records.append(Listener(ns.inode, e.protocol, e.local, e.state, e.inode, owners))


def _hidden(r: _Reading, ns: Netns, s: Suspect, owners: tuple[Owner, ...], inode: int) -> None:
    e = s.entry
    r.records.append(
        HiddenSocket(
            ns, e.protocol, e.local, e.remote, e.state, inode,
            s.seen_by, s.missing_from, owners, e.local_port,
        )
    )  # fmt: skip


def _probe_only_holders(r: _Reading) -> dict[tuple[str, int], list[HeldSocket]]:
    """The unlisted sockets processes hold on the ports only the probe found (holders.py)."""
    wanted = {
        (s.entry.transport, s.entry.local_port or 0)
        for _, s in r.confirmed
        if s.seen_by == (BIND_PROBE,)
    }
    if not wanted:
        return {}
    candidates = [
        (inode, pid, fd)
        for inode, (pid, fd) in r.owners.fd_of.items()
        if inode not in r.listed_inodes
    ]
    return holders(candidates, wanted)


def _records_of_hidden(r: _Reading) -> None:
    """A record for each confirmed suspect, with its owners read afresh (a socket may be
    newer than the first walk); a port only the probe found is tied to the socket holding it,
    and dropped if that is a TCP socket only bound (which no view lists before 6.7)."""
    if not r.confirmed:
        return
    r.owners = _owners(r)
    held = _probe_only_holders(r)
    for ns, s in r.confirmed:
        if s.seen_by != (BIND_PROBE,):
            _hidden(r, ns, s, r.owners.of(s.entry.inode), s.entry.inode)
            continue
        sockets = held.get((s.entry.transport, s.entry.local_port or 0), [])
        hiding = [h for h in sockets if not h.bound_only]
        if sockets and not hiding:
            continue  # explained: a TCP socket bound, neither listening nor connected
        owners = tuple(o for h in hiding for o in r.owners.of(h.inode))
        _hidden(r, ns, s, owners, hiding[0].inode if hiding else 0)


def _summary(ns: Netns, first: NsLook, suspects: int) -> NetnsViews:
    look = first.look

    def total(view: str) -> int | None:
        if view not in look.sockets:
            return None
        return len(look.sockets[view]) + look.timewaits.get(view, 0)

    why = "; ".join(f"{t}: {reason}" for t, reason in first.plan.items()) or first.unprobed
    return NetnsViews(
        ns,
        total(PROC_NET),
        total(SOCK_DIAG),
        total(BPF_SOCK_ITER),
        sum(look.probed.values()),
        sum(len(p) for p in look.ports.values()),
        why,
        suspects,
    )


def _one_namespace(r: _Reading, ns: Netns, mode: str) -> None:
    paths = _entry_paths(ns, r.owners, r.kernel.path("/proc"))
    iters = r.iterators

    def again(suspects: dict[Key, Suspect]) -> Look:
        return _in(ns, paths, lambda: look_live(mode, iters, suspects)).look

    try:
        first = _in(ns, paths, lambda: look_live(mode, iters))
        suspects = disagreements(first.look)
        confirmed = settle(suspects, again)
    except KernelAccessError as exc:
        r.gap(f"sockets in {ns.label}", str(exc))
        return
    _gaps(r, ns, first)
    r.records.append(_summary(ns, first, len(suspects)))
    _count(r, first.look)
    _listeners(r, ns, first.look)
    for entries in first.look.sockets.values():
        r.listed_inodes.update(e.inode for e in entries.values())
    r.confirmed += [(ns, s) for s in confirmed.values()]


def _read_captured(r: _Reading) -> None:
    """A captured tree: its /proc/net files, the only view a tree can hold."""
    ns = Netns(0, (), 0, True)
    first = look_captured(str(r.kernel.path("/proc/net")))
    _gaps(r, ns, first)
    r.gap("sock_diag, BPF socket iterators, bind probe and other namespaces", NOT_LIVE)
    if first.look.read:
        r.records.append(_summary(ns, first, 0))
        _count(r, first.look)
        _listeners(r, ns, first.look)


def _owners(r: _Reading) -> OwnerMap:
    fds = None
    if r.fd_iterator is not None:
        with contextlib.suppress(KernelAccessError):  # /proc then
            fds = r.fd_iterator.walk()
    return read_owners(r.kernel.path("/proc"), fds)


def _read_owners(r: _Reading) -> None:
    r.owners = _owners(r)
    if r.owners.unreadable:
        pids = ", ".join(f"{p}: {why}" for p, why in sorted(r.owners.unreadable.items())[:5])
        count = len(r.owners.unreadable)
        r.gap("socket owners and namespaces", f"/proc/<pid> of {count} processes: {pids}")


def read_sockets(kernel: Kernel, mode: str) -> _Reading:
    r = _Reading(NAME, kernel)
    if not kernel.live:
        _read_captured(r)
        return r
    own = netns.current_netns()
    _open_iterators(r)
    try:
        _read_owners(r)
        for ns in namespaces(r.owners, named_netns(Path(RUN_NETNS)), own):
            _one_namespace(r, ns, mode)
        _records_of_hidden(r)
    finally:
        for iterator in (r.iterators, r.fd_iterator):
            if iterator is not None:
                iterator.close()
    return r


__all__ = ["NAME", "look_captured", "look_live", "read_sockets"]
