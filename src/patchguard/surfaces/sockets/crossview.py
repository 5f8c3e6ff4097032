"""The cross-view: pure functions over what the views of one namespace saw.

Three views list sockets (proc_net, sock_diag, bpf_sock_iter); each pair is compared socket
by socket over the protocols both read. The bind probe knows only ports: a port it finds in
use that no view lists a socket on is hidden from every view. TCP sockets only bound (state
BOUND_INACTIVE) are dumped by sock_diag since 6.7 but never printed in /proc/net/tcp nor walked
by bpf_iter_tcp: they are not compared, though their ports count as listed for the probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from patchguard.surfaces.sockets.procnet import BOUND_ONLY
from patchguard.surfaces.sockets.records import BIND_PROBE, Key, SocketEntry


@dataclass
class Look:
    """One look at one namespace: each view's sockets by key, and the probe's ports."""

    sockets: dict[str, dict[Key, SocketEntry]] = field(default_factory=dict)
    read: dict[str, set[str]] = field(default_factory=dict)  # view -> protocols it read
    ports: dict[str, set[int]] = field(default_factory=dict)  # transport -> ports in use
    probed: dict[str, int] = field(default_factory=dict)  # transport -> ports asked
    # TIME_WAIT mini sockets are not compared: no process holds one, nothing can be sent
    # through one, and thousands come and go each second on a busy host. Their ports still
    # explain a refused bind.
    timewait: dict[str, dict[str, set[int]]] = field(default_factory=dict)  # view -> transport
    timewaits: dict[str, int] = field(default_factory=dict)  # view -> how many

    def add(self, view: str, protocol: str, entries: list[SocketEntry]) -> None:
        sockets = self.sockets.setdefault(view, {})
        waiting = self.timewait.setdefault(view, {}).setdefault(protocol.rstrip("6"), set())
        count = 0
        for e in entries:
            if e.timewait:
                waiting.add(e.local_port or 0)
                count += 1
            else:
                sockets[e.key] = e
        self.timewaits[view] = self.timewaits.get(view, 0) + count
        self.read.setdefault(view, set()).add(protocol)


@dataclass(frozen=True)
class Suspect:
    entry: SocketEntry  # as the view that saw it showed it (a probe-only port: a bare entry)
    seen_by: tuple[str, ...]
    missing_from: tuple[str, ...]


def _compared(entry: SocketEntry) -> bool:
    return not (entry.protocol.startswith("tcp") and entry.state in BOUND_ONLY)


def _socket_verdicts(look: Look) -> dict[Key, Suspect]:
    found: dict[Key, Suspect] = {}
    for view, entries in look.sockets.items():
        for other, theirs in look.sockets.items():
            if other == view:
                continue
            for key in entries.keys() - theirs.keys():  # set difference: C speed at 10k
                entry = entries[key]
                if entry.protocol in look.read[other] and _compared(entry) and key not in found:
                    found[key] = _suspect(look, key, entry)
    return found


def _suspect(look: Look, key: Key, entry: SocketEntry) -> Suspect:
    seen = tuple(v for v, entries in look.sockets.items() if key in entries)
    missing = tuple(
        v
        for v, entries in look.sockets.items()
        if key not in entries and entry.protocol in look.read[v]
    )
    if entry.local_port in look.ports.get(entry.transport, ()):
        seen += (BIND_PROBE,)  # its port refused the probe's bind too
    return Suspect(entry, seen, missing)


def listed_ports(look: Look, transport: str) -> set[int]:
    """The ports some view lists a socket on, TIME_WAIT ones included."""
    listed = {
        e.local_port
        for entries in look.sockets.values()
        for e in entries.values()
        if e.transport == transport and e.local_port
    }
    for waiting in look.timewait.values():
        listed |= waiting.get(transport, set())
    return listed


def _port_verdicts(look: Look) -> dict[Key, Suspect]:
    found: dict[Key, Suspect] = {}
    for transport, used in look.ports.items():
        missing = tuple(v for v, protocols in look.read.items() if transport in protocols)
        for port in sorted(used - listed_ports(look, transport)):
            entry = SocketEntry(transport, "IN_USE", 0, port)
            found[(transport, entry.local)] = Suspect(entry, (BIND_PROBE,), missing)
    return found


def disagreements(look: Look) -> dict[Key, Suspect]:
    """Every socket one view lists and another lacks, and every port in use none lists."""
    return {**_socket_verdicts(look), **_port_verdicts(look)}


def settle(
    suspects: dict[Key, Suspect], again: Callable[[dict[Key, Suspect]], Look]
) -> dict[Key, Suspect]:
    """The suspects of a first look (its disagreements) that a second look, taken only if
    there are any, still disagrees on, with the second look's verdict: a socket that opened
    or closed between two views is gone from the suspects by then."""
    if not suspects:
        return {}
    second = disagreements(again(suspects))
    return {key: verdict for key, verdict in second.items() if key in suspects}


def counted(look: Look, view: str) -> dict[str, int]:
    """protocol -> the sockets a view lists that sockstat's `inuse` counts."""
    found: dict[str, int] = {}
    for entry in look.sockets.get(view, {}).values():
        if entry.counted:
            found[entry.protocol] = found.get(entry.protocol, 0) + 1
    return found


__all__ = ["Key", "Look", "Suspect", "counted", "disagreements", "listed_ports", "settle"]
