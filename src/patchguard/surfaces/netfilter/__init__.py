"""Netfilter hooks: every function the kernel runs on packets at a netfilter hook, seen two
ways: the hook lists themselves, as `nft list hooks` dumps them through nfnetlink
(patchguard.kernel.nfnetlink_hook), and the BPF netfilter links, through bpf(2).

A packet hook is where rootkits wait for their "magic packet" (a trigger that opens a shell
or hides a connection) and where firewalls work. The kernel names each hook's function with
%ps: `nf_nat_ipv4_in` and its module `nf_nat`, or a bare `0x...` when no symbol covers the
address. A hook running code no symbol covers, or registered by a module that /proc/modules
does not list, is a module that hid itself after hooking: tampering. A BPF netfilter link is
named with whoever keeps it (a process holding the link, or a pin); one that nothing visible
keeps is suspicious (a link is released with its last fd or pin). Programs themselves are the
ebpf surface's subject: its findings are not repeated here.

Where the kernel has no hook dump (CONFIG_NETFILTER_NETLINK_HOOK off: Debian's 6.1, these
VMs), the hook lists are read from kernel memory instead (patchguard.kernel.nf_hooks), for
every network namespace, and each function is named the way %ps would: by kallsyms, in core
text or inside a module /proc/modules lists, else as a bare address.

The dump covers the scanning process's network namespace only; the memory view covers all
of them; BPF links are listed for every netns, without saying which.
"""

from __future__ import annotations

from patchguard.surfaces.netfilter.assess import assess_bpf_hook, assess_hook, assess_records
from patchguard.surfaces.netfilter.parse import config_option, dump_failure, parse_hook
from patchguard.surfaces.netfilter.paths import NAME, family_name, hook_name
from patchguard.surfaces.netfilter.records import (
    BpfNetfilterHook,
    NetfilterHook,
    NetfilterRecords,
    NetfilterViews,
)
from patchguard.surfaces.netfilter.surface import NetfilterSurface

__all__ = [
    "NAME",
    "BpfNetfilterHook",
    "NetfilterHook",
    "NetfilterRecords",
    "NetfilterSurface",
    "NetfilterViews",
    "assess_bpf_hook",
    "assess_hook",
    "assess_records",
    "config_option",
    "dump_failure",
    "family_name",
    "hook_name",
    "parse_hook",
]
