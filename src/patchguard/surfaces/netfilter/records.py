"""The netfilter surface's records: hooks from the lists, BPF netfilter links, the views."""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.surfaces.base import RecordSet
from patchguard.surfaces.ebpf import Owner

# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetfilterHook:
    """One entry of a hook list, as nfnl_hook_dump_one() describes it."""

    family: str  # ipv4, ipv6, arp, bridge, netdev
    hooknum: int
    hook: str  # prerouting, input, forward, output, postrouting; ingress, egress
    priority: int
    function: str | None  # %ps of ops->hook; "0x..." when no symbol covers it; None: no kallsyms
    module: str | None  # the module whose symbol it is; None for built-in code
    hook_type: str  # nftables, flowtable, bpf, or native (registered by kernel code directly)
    device: str | None = None  # netdev hooks
    table: str | None = None  # nftables and flowtable hooks
    chain: str | None = None  # the nf_tables chain or flowtable name
    prog_id: int | None = None  # bpf hooks
    netns: int | None = None  # the namespace's inode number, where the memory view read it

    @property
    def unresolved(self) -> bool:
        return self.function is not None and self.function.startswith("0x")


@dataclass(frozen=True)
class BpfNetfilterHook:
    """A BPF netfilter link: a program on one hook list, and who keeps it there."""

    link_id: int
    prog_id: int
    prog_name: str | None  # None: the program could not be read
    family: str
    hooknum: int
    hook: str
    priority: int
    defrag: bool  # BPF_F_NETFILTER_IP_DEFRAG: runs on reassembled packets
    owners: tuple[Owner, ...]  # processes holding the link
    pins: tuple[str, ...]  # the link's pins in bpffs
    in_hook_lists: bool | None = None  # seen in the dumped lists; None: they were not read


@dataclass(frozen=True)
class NetfilterViews:
    """What the hooks can be checked against, and which views were read."""

    modules: tuple[str, ...] | None  # /proc/modules; () without module support; None: unread
    hook_lists_read: bool
    bpf_links_read: bool
    hook_lists_from: str | None = None  # "nfnetlink" or "kernel memory"
    dump_unavailable: str | None = None  # why the nfnetlink dump could not be used


@dataclass(frozen=True)
class NetfilterRecords(RecordSet):
    """The netfilter surface's records by kind."""

    hooks: tuple[NetfilterHook, ...] = ()
    links: tuple[BpfNetfilterHook, ...] = ()
    views: NetfilterViews | None = None
