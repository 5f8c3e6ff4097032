"""What the ebpf surface records: programs, links and maps with their attach points and what
keeps them alive (docs/scan-json.md describes each field)."""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.surfaces.base import RecordSet
from patchguard.surfaces.ebpf.uprobes import ProbedSite, SecretHit


@dataclass(frozen=True)
class Owner:
    """A process holding fds to the object: one record per process, `fd` is its lowest."""

    pid: int
    comm: str
    exe: str | None
    exe_deleted: bool
    exe_missing: bool
    fd: int
    fd_count: int = 1


@dataclass(frozen=True)
class NetAttach:
    """Where a network program runs, in words: device and namespace, direction, mode."""

    hook: str  # xdp, tc, tcx, netkit, cgroup, netns, sockmap, socket, netfilter
    device: str | None = None
    ifindex: int | None = None
    netns: str | None = None  # "init" or a /run/netns name, else "net:[inode]"
    direction: str | None = None  # ingress, egress
    mode: str | None = None  # xdp: native, generic, offload; tc: direct-action or not
    priority: int | None = None
    handle: str | None = None  # tc filter handle
    kept_by: str | None = None  # "tc filter", "XDP attachment", "link", ...

    def spelled(self) -> str:
        """`xdp on veth0 in netns pgtest (native)`, `tc on eth0 ingress prio 1 handle 0x1`."""
        where = self.device or (f"ifindex {self.ifindex}" if self.ifindex is not None else None)
        words = [self.hook] + ([f"on {where}"] if where else [])
        words += [f"in netns {self.netns}"] if self.netns else []
        words += [self.direction] if self.direction else []
        words += [f"prio {self.priority}"] if self.priority is not None else []
        words += [f"handle {self.handle}"] if self.handle else []
        return " ".join(words) + (f" ({self.mode})" if self.mode else "")


@dataclass(frozen=True)
class Attachment:
    via: str  # "link", "perf_event" (PERF_EVENT_IOC_SET_BPF, no link object), "tc", "xdp"
    target: str | None
    link_id: int | None = None
    link_type: str | None = None
    attach_type: str | None = None
    uprobe: ProbedSite | None = None
    net: NetAttach | None = None
    secret: SecretHit | None = None


@dataclass(frozen=True)
class BpfProgram:
    prog_id: int
    prog_type: str
    name: str  # the full name from the program's BTF func_info, else the kernel's 15 chars
    tag: str
    loaded_at: str  # ISO 8601, UTC
    created_by_uid: int
    map_ids: tuple[int, ...]
    btf_id: int
    attach_btf: str | None  # tracing/LSM programs: the kernel function they were verified for
    helpers: tuple[str, ...]
    kfuncs: tuple[str, ...]
    attachments: tuple[Attachment, ...]
    owners: tuple[Owner, ...]
    pins: tuple[str, ...]
    helpers_hidden: bool = False
    kernel_name: str = ""  # the name as the kernel keeps it (cut to 15 characters)
    tail_calls: tuple[int, ...] = ()  # program ids in the prog_arrays it tail-calls through
    maps: tuple[str, ...] = ()  # "map 7 (name, type) pinned at /sys/fs/bpf/x" per map used
    kept_by: tuple[str, ...] = ()  # what keeps it alive, in words
    # Another patchguard process's (kernel/bpf/peers.py verified it): the pid holding it.
    patchguard_pid: int | None = None
    second_look: bool = False  # kept by nothing when listed, and again when read once more


@dataclass(frozen=True)
class BpfLink:
    link_id: int
    link_type: str
    prog_id: int
    attach_type: str | None
    target: str | None
    owners: tuple[Owner, ...]
    pins: tuple[str, ...]


@dataclass(frozen=True)
class BpfMap:
    map_id: int
    map_type: str
    name: str
    owners: tuple[Owner, ...]
    pins: tuple[str, ...]


@dataclass(frozen=True)
class EbpfRecords(RecordSet):
    """The ebpf surface's records by kind: the host's programs, links and maps."""

    programs: tuple[BpfProgram, ...] = ()
    links: tuple[BpfLink, ...] = ()
    maps: tuple[BpfMap, ...] = ()
