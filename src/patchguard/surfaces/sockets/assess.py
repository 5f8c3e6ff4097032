"""Findings of the sockets surface: a socket one view shows and another hides."""

from __future__ import annotations

from collections.abc import Sequence

from patchguard.findings import Disposition, Evidence, Finding
from patchguard.surfaces.base import finding
from patchguard.surfaces.sockets.collect import NAME
from patchguard.surfaces.sockets.records import BIND_PROBE, HiddenSocket, Owner

ROOTKIT = "T1014"


def shown(text: str) -> str:
    """Text from others (process names, unix paths) with control characters made visible."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _owners(owners: Sequence[Owner]) -> str:
    if not owners:
        return "no process holds it open (an fd we can read)"
    named = ", ".join(f"pid {o.pid} ({shown(o.comm)})" for o in owners)
    return f"held by {named}"


def _subject(h: HiddenSocket) -> str:
    # A unix socket only sock_diag saw has no name: its inode then.
    where = f"port {h.port}" if h.seen_by == (BIND_PROBE,) else shown(h.local) or f"inode {h.inode}"
    return f"{h.protocol} {where} in {h.netns.label}"


def _summary(h: HiddenSocket) -> str:
    seen, missing = ", ".join(h.seen_by), ", ".join(h.missing_from)
    if h.seen_by == (BIND_PROBE,):
        return (
            f"{h.protocol} port {h.port} in {h.netns.label} is in use (bind(2) is refused with "
            f"EADDRINUSE) but {missing} list no socket on it: the kernel holds a socket there "
            "that every listing hides, which only a rootkit's hook does."
        )
    remote = f" to {shown(h.remote)}" if h.remote and not h.remote.endswith(":0") else ""
    return (
        f"{h.protocol} socket {shown(h.local)}{remote} ({h.state}, inode {h.inode}) in "
        f"{h.netns.label}, {_owners(h.owners)}, is seen by {seen} but hidden from {missing}, "
        "twice: something filters that view of the kernel's sockets."
    )


def _evidence(h: HiddenSocket) -> Evidence:
    return {
        "netns": h.netns.inode,
        "netns_names": list(h.netns.names),
        "protocol": h.protocol,
        "local": h.local,
        "remote": h.remote,
        "port": h.port,
        "state": h.state,
        "inode": h.inode,
        "seen_by": list(h.seen_by),
        "missing_from": list(h.missing_from),
        "owner_pids": [o.pid for o in h.owners],
        "owner_comms": [o.comm for o in h.owners],
    }


def assess_hidden(h: HiddenSocket) -> Finding:
    return finding(
        NAME,
        "hidden-socket",
        _subject(h),
        _summary(h),
        _evidence(h),
        disposition=Disposition.TAMPERING,
    )


__all__ = ["assess_hidden", "shown"]
