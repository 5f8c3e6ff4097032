"""Where network programs run, in words: XDP programs (native, generic, offload) and tc BPF
filters (clsact ingress/egress, with priority and handle) from rtnetlink, tcx and netkit
programs from BPF_PROG_QUERY, in every network namespace (named ones under /run/netns and
those of running processes); cgroup and netns links by path and name.

A program kept only by a tc filter or an XDP attachment has no fd, no pin and no link: this is
where its attach point, and what keeps it alive, are found. Each namespace is read from a
short-lived thread that joined it (setns changes the network namespace of one thread only).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from patchguard.findings import Gap
from patchguard.kernel.bpf import objects as objs
from patchguard.kernel.bpf import syscall as bpf
from patchguard.surfaces.ebpf.records import NetAttach

NAME = "ebpf"
CLONE_NEWNET = 0x40000000
TC_PARENTS = {0xFFFFFFF2: "ingress", 0xFFFFFFF3: "egress"}  # clsact's two hooks
TCA_BPF_ID = 11  # pyroute2's tcmsg table stops at TCA_BPF_FLAGS: the id is read raw
TCA_BPF_FLAG_ACT_DIRECT = 1
XDP_MODES = (
    ("IFLA_XDP_DRV_PROG_ID", "native"),
    ("IFLA_XDP_SKB_PROG_ID", "generic"),
    ("IFLA_XDP_HW_PROG_ID", "offload"),
)
QUERY_HOOKS = (
    ("tcx", "tcx_ingress", "ingress"),
    ("tcx", "tcx_egress", "egress"),
    ("netkit", "netkit_primary", "primary"),
    ("netkit", "netkit_peer", "peer"),
)
SOCKMAP_TYPES = ("sockmap", "sockhash")
SOCKMAP_HOOKS = (
    "sk_msg_verdict",
    "sk_skb_stream_parser",
    "sk_skb_stream_verdict",
    "sk_skb_verdict",
)
MAX_NAMESPACES = 1024
MAX_CGROUP_DIRS = 100_000
NETNS_TIMEOUT = 10.0  # seconds for one namespace's dumps
PARALLEL = 8  # namespaces read at once
NFPROTO = {1: "inet", 2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}
NF_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")


@dataclass(frozen=True)
class Netns:
    path: str  # a file to setns() into
    label: str  # "init", a /run/netns name, or "net:[inode]"
    inode: int


def namespaces(root: Path = Path("/")) -> list[Netns]:
    """Every network namespace with a name or a process in it, once each."""
    found: dict[int, Netns] = {}
    init = _inode(root / "proc/1/ns/net")
    for path, label in _candidates(root):
        ino = _inode(path)
        if ino is None or ino in found or len(found) >= MAX_NAMESPACES:
            continue
        found[ino] = Netns(str(path), "init" if ino == init else label or f"net:[{ino}]", ino)
    return list(found.values())


def _candidates(root: Path) -> Iterator[tuple[Path, str | None]]:
    yield root / "proc/1/ns/net", "init"
    named = root / "run/netns"
    if named.is_dir():
        for entry in sorted(os.listdir(named)):
            yield named / entry, entry
    for pid in os.scandir(root / "proc"):
        if pid.name.isdigit():
            yield Path(pid.path) / "ns/net", None


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def attachments(spaces: list[Netns], gaps: list[Gap]) -> dict[int, list[NetAttach]]:
    """Per program id, where it runs on devices: XDP, tc filters, tcx. Namespaces are read
    PARALLEL at a time: each costs a thread and a netlink socket, mostly waiting."""
    found: dict[int, list[NetAttach]] = {}
    for start in range(0, len(spaces), PARALLEL):
        readers = [_NetnsRead(ns) for ns in spaces[start : start + PARALLEL]]
        for reader in readers:
            got, error = reader.result()
            if error:
                gaps.append(Gap(NAME, f"network namespace {reader.ns.label}", error))
            for prog_id, attach in got:
                found.setdefault(prog_id, []).append(attach)
    return found


class _NetnsRead:
    """One namespace read from its own thread, started at once, collected by result()."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self._out: list[tuple[int, NetAttach]] = []
        self._errors: list[str] = []
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"netns {ns.label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out.extend(_netns_hooks(self.ns))
            _join(self.ns.path)
            self._out.extend(_read_devices(self.ns.label))
        except Exception as exc:  # a thread's failure is reported, not raised into the void
            self._errors.append(f"{type(exc).__name__}: {exc}")

    def result(self) -> tuple[list[tuple[int, NetAttach]], str | None]:
        self._thread.join(max(0.0, self._started + NETNS_TIMEOUT - time.monotonic()))
        if self._thread.is_alive():
            return [], f"no answer from rtnetlink in {NETNS_TIMEOUT:.0f} s"
        return self._out, self._errors[0] if self._errors else None


_libc = ctypes.CDLL(None, use_errno=True)


def _join(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _read_devices(label: str) -> list[tuple[int, NetAttach]]:
    """XDP programs and tc filters on every device of the namespace this thread is in, from
    rtnetlink dumps (pyroute2's ifinfmsg and tcmsg; kernel/netlink_dump.py)."""
    from patchguard.kernel.pyroute2_modules import without_package_init

    without_package_init()  # the rtnetlink codecs alone, not all of pyroute2's
    from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_GETTFILTER, RTM_NEWLINK, RTM_NEWTFILTER
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    from patchguard.kernel.netlink_dump import NetlinkDump

    found: list[tuple[int, NetAttach]] = []
    policy = {RTM_NEWLINK: ifinfmsg, RTM_NEWTFILTER: tcmsg}
    with NetlinkDump(socket.NETLINK_ROUTE, policy) as rtnl:
        for link in rtnl.dump(ifinfmsg(), RTM_GETLINK, f"links of {label}"):
            device, index = str(link.get_attr("IFLA_IFNAME")), int(link["index"])
            found += _xdp(link, device, index, label)
            for parent, direction in TC_PARENTS.items():
                ask = tcmsg()
                ask["index"], ask["parent"] = index, parent
                filters = rtnl.dump(ask, RTM_GETTFILTER, f"tc filters of {device} in {label}")
                found += _tc(filters, device, index, label, direction)
            found += _queried(device, index, label)
    return found


def _xdp(link: Any, device: str, index: int, label: str) -> list[tuple[int, NetAttach]]:
    xdp = link.get_attr("IFLA_XDP")
    if xdp is None:
        return []
    out = []
    for attr, mode in XDP_MODES:
        prog_id = xdp.get_attr(attr)
        if prog_id:
            where = NetAttach("xdp", device, index, label, "ingress", mode)
            out.append((int(prog_id), replace(where, kept_by="XDP attachment")))
    return out


def _tc(
    filters: Any, device: str, index: int, label: str, direction: str
) -> list[tuple[int, NetAttach]]:
    out = []
    for f in filters:
        options = f.get_attr("TCA_OPTIONS")
        if f.get_attr("TCA_KIND") != "bpf" or options is None:
            continue
        prog_id = _raw_u32(options, TCA_BPF_ID)
        if prog_id is None:
            continue
        flags = options.get_attr("TCA_BPF_FLAGS") or 0
        mode = "direct action" if flags & TCA_BPF_FLAG_ACT_DIRECT else None
        prio, handle = int(f["info"]) >> 16, f"{int(f['handle']):#x}"
        where = NetAttach("tc", device, index, label, direction, mode, prio, handle, "tc filter")
        out.append((prog_id, where))
    return out


def _raw_u32(nested: Any, nla_type: int) -> int | None:
    """The u32 value of attribute `nla_type` that pyroute2 could not name (kept as UNKNOWN
    with its header only): read from the message buffer at the attribute's offset."""
    for slot in nested.get("attrs", []):
        cell = slot.nla  # decoded: its header carries the type
        if slot.name == "UNKNOWN" and cell["header"]["type"] == nla_type:
            raw = bytes(cell.data[cell.offset + 4 : cell.offset + 8])
            return int.from_bytes(raw, "little") if len(raw) == 4 else None
    return None


def _netns_hooks(ns: Netns) -> list[tuple[int, NetAttach]]:
    """Programs attached to the namespace itself without a link (BPF_PROG_ATTACH): the flow
    dissector, which parses every packet the namespace receives."""
    fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        progs, links = bpf.prog_query(fd, bpf.ATTACH_TYPES.index("flow_dissector"))
    except bpf.BpfError:
        return []
    finally:
        os.close(fd)
    kept = "flow dissector attachment"
    return [
        (prog_id, NetAttach("flow_dissector", netns=ns.label, kept_by=None if link else kept))
        for prog_id, link in zip(progs, links, strict=True)
    ]


def _queried(device: str, index: int, label: str) -> list[tuple[int, NetAttach]]:
    out = []
    for hook, attach_type, direction in QUERY_HOOKS:
        try:
            progs, links = bpf.prog_query(index, bpf.ATTACH_TYPES.index(attach_type))
        except bpf.BpfError:
            continue  # EINVAL/ENODEV: no tcx on this kernel or device
        for prog_id, link_id in zip(progs, links, strict=True):
            kept = f"{hook} attachment" if not link_id else None  # a link says what keeps it
            out.append((prog_id, NetAttach(hook, device, index, label, direction, kept_by=kept)))
    return out


@dataclass
class Places:
    """What link targets are named by: devices seen in each namespace, namespace names by
    inode, cgroup paths by id (walked only when a cgroup link needs one), map names."""

    root: Path
    net: dict[int, list[NetAttach]]
    netns: dict[int, str]
    maps: dict[int, str]
    _cgroups: dict[int, str] | None = None

    def cgroup(self, cgroup_id: int) -> str:
        if self._cgroups is None:
            self._cgroups = cgroup_paths(self.root)
        return self._cgroups.get(cgroup_id, f"cgroup id {cgroup_id}")


# The cgroup hooks each program type can sit on (enum bpf_attach_type names).
_SOCK_ADDR = (
    "cgroup_inet4_bind",
    "cgroup_inet6_bind",
    "cgroup_inet4_connect",
    "cgroup_inet6_connect",
    "cgroup_udp4_sendmsg",
    "cgroup_udp6_sendmsg",
    "cgroup_udp4_recvmsg",
    "cgroup_udp6_recvmsg",
    "cgroup_inet4_getpeername",
    "cgroup_inet6_getpeername",
    "cgroup_inet4_getsockname",
    "cgroup_inet6_getsockname",
    "cgroup_unix_connect",
    "cgroup_unix_sendmsg",
    "cgroup_unix_recvmsg",
    "cgroup_unix_getpeername",
    "cgroup_unix_getsockname",
)
CGROUP_HOOKS: dict[str, tuple[str, ...]] = {
    "cgroup_skb": ("cgroup_inet_ingress", "cgroup_inet_egress"),
    "cgroup_sock": (
        "cgroup_inet_sock_create",
        "cgroup_inet_sock_release",
        "cgroup_inet4_post_bind",
        "cgroup_inet6_post_bind",
    ),
    "cgroup_sock_addr": _SOCK_ADDR,
    "cgroup_sockopt": ("cgroup_getsockopt", "cgroup_setsockopt"),
    "sock_ops": ("cgroup_sock_ops",),
    "cgroup_device": ("cgroup_device",),
    "cgroup_sysctl": ("cgroup_sysctl",),
}


def cgroup_attachments(
    root: Path, prog_types: set[str], gaps: list[Gap]
) -> dict[int, list[NetAttach]]:
    """Programs attached to cgroups without a link (BPF_PROG_ATTACH), for the program types
    asked about: every cgroup directory is asked for each of their hooks."""
    hooks = sorted({h for t in prog_types for h in CGROUP_HOOKS.get(t, ())})
    found: dict[int, list[NetAttach]] = {}
    if not hooks:
        return found
    for path in cgroup_paths(root).values():
        for prog_id, where in _cgroup_hooks(root, path, hooks, gaps):
            found.setdefault(prog_id, []).append(where)
    return found


def _cgroup_hooks(
    root: Path, path: str, hooks: list[str], gaps: list[Gap]
) -> list[tuple[int, NetAttach]]:
    try:
        fd = os.open(root / path.lstrip("/"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []  # removed while we walked
    out = []
    try:
        for hook in hooks:
            try:
                progs, links = bpf.prog_query(fd, bpf.ATTACH_TYPES.index(hook))
            except bpf.BpfError as exc:
                if exc.errno not in (2, 22):  # gone, or a hook this kernel lacks
                    gaps.append(Gap(NAME, f"cgroup {path}", str(exc)))
                continue
            where = NetAttach("cgroup", path, direction=hook.removeprefix("cgroup_"))
            for prog_id, link_id in zip(progs, links, strict=True):
                out.append((prog_id, where if link_id else replace(where, kept_by="cgroup")))
    finally:
        os.close(fd)
    return out


def cgroup_paths(root: Path = Path("/")) -> dict[int, str]:
    """cgroup id -> path: a cgroup2 directory's inode number is its id."""
    found: dict[int, str] = {}
    for mount in _cgroup2_mounts(root):
        for dirpath, _dirs, _files in os.walk(root / mount.lstrip("/")):
            try:
                found.setdefault(os.stat(dirpath).st_ino, "/" + os.path.relpath(dirpath, root))
            except OSError:
                continue
            if len(found) >= MAX_CGROUP_DIRS:
                return found
    return found


def _cgroup2_mounts(root: Path) -> list[str]:
    from patchguard.kernel.mounts import mounted_types

    try:
        points = mounted_types((root / "proc/self/mountinfo").read_text())
    except OSError:
        return []
    return sorted(point for point, fstype in points.items() if fstype == "cgroup2")


def sockmap_attachments(maps: list[objs.MapInfo]) -> dict[int, list[NetAttach]]:
    """sk_msg and sk_skb programs attached to sockmaps without a link (BPF_PROG_ATTACH with
    the map as target): they see, and may redirect, every message of the map's sockets."""
    found: dict[int, list[NetAttach]] = {}
    for m in maps:
        if m.map_type in SOCKMAP_TYPES:
            for prog_id, where in _sockmap_hooks(m):
                found.setdefault(prog_id, []).append(where)
    return found


def _sockmap_hooks(m: objs.MapInfo) -> list[tuple[int, NetAttach]]:
    try:
        fd = bpf.fd_by_id(bpf.BPF_MAP_GET_FD_BY_ID, m.map_id, "MAP_GET_FD_BY_ID")
    except bpf.BpfError:
        return []  # gone while we looked
    out = []
    try:
        for hook in SOCKMAP_HOOKS:
            try:
                progs, links = bpf.prog_query(fd, bpf.ATTACH_TYPES.index(hook))
            except bpf.BpfError:
                continue
            where = NetAttach("sockmap", f"map {m.map_id} ({m.name or 'unnamed'})", direction=hook)
            for prog_id, link_id in zip(progs, links, strict=True):
                out.append((prog_id, where if link_id else replace(where, kept_by="sockmap")))
    finally:
        os.close(fd)
    return out


def link_attach(link: objs.LinkInfo, places: Places) -> NetAttach | None:
    """The attach point of a network link in words, matched with what rtnetlink showed."""
    if link.link_type in ("xdp", "tcx", "netkit"):
        return _device_link(link, places.net)
    kind = (link.attach_type or "").removeprefix("cgroup_")
    if link.link_type == "cgroup":
        return NetAttach("cgroup", places.cgroup(link.object_id), direction=kind)
    if link.link_type == "netns":
        label = places.netns.get(link.object_id, f"net:[{link.object_id}]")
        return NetAttach(kind or "netns", netns=label)
    if link.link_type == "sockmap":
        name = places.maps.get(link.object_id, "?")
        return NetAttach("sockmap", f"map {link.object_id} ({name})", direction=kind)
    if link.link_type == "netfilter" and link.netfilter is not None:
        nf = link.netfilter
        hook = NF_HOOKS[nf.hooknum] if 0 <= nf.hooknum < len(NF_HOOKS) else str(nf.hooknum)
        family = NFPROTO.get(nf.pf, str(nf.pf))
        return NetAttach("netfilter", None, None, None, f"{family} {hook}", None, nf.priority)
    return None


def _device_link(link: objs.LinkInfo, net: dict[int, list[NetAttach]]) -> NetAttach:
    hook = "xdp" if link.link_type == "xdp" else link.link_type
    for where in net.get(link.prog_id, []):
        if where.hook in (hook, "tcx") and where.ifindex == link.ifindex:
            return replace(where, kept_by=None)  # the link keeps it, not the device
    direction = (link.attach_type or "").rsplit("_", 1)[-1] or None
    return NetAttach(hook, None, link.ifindex, None, direction)


__all__ = [
    "Netns",
    "Places",
    "attachments",
    "cgroup_attachments",
    "cgroup_paths",
    "link_attach",
    "namespaces",
    "sockmap_attachments",
]
