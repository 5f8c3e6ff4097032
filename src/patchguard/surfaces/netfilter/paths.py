"""The netfilter surface's name, hook families and hook names."""

from __future__ import annotations

import errno

from patchguard.kernel.nfnetlink_hook import (
    NFNL_HOOK_TYPE_BPF,
    NFNL_HOOK_TYPE_NFT_FLOWTABLE,
    NFNL_HOOK_TYPE_NFTABLES,
)

NAME = "netfilter"
ROOTKIT = "T1014"
PROC_MODULES = "/proc/modules"
CONFIG_OPTION = "CONFIG_NETFILTER_NETLINK_HOOK"
NOT_BUILT = (
    f"nfnetlink hook dump not supported by this kernel ({CONFIG_OPTION} not set in its "
    ".config, so not asked: the kernel answers EINVAL for a subsystem it does not have)"
)

# enum NFPROTO_* (include/uapi/linux/netfilter.h).
NFPROTO_INET, NFPROTO_IPV4, NFPROTO_ARP, NFPROTO_NETDEV = 1, 2, 3, 5
NFPROTO_BRIDGE, NFPROTO_IPV6 = 7, 10
FAMILIES = {1: "inet", 2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}
# Hook numbers by the names nft uses: enum nf_inet_hooks (and the bridge's NF_BR_*, in the same
# order), NF_ARP_IN/OUT/FORWARD, enum nf_dev_hooks.
INET_HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress")
HOOK_NAMES = {NFPROTO_ARP: ("input", "output", "forward"), NFPROTO_NETDEV: ("ingress", "egress")}
# The lists nfnl_hook_entries_head() serves: net->nf.hooks_{ipv4,ipv6,arp,bridge}[hook]; netdev
# lists hang off each device. The first one answers whether the kernel can dump at all.
HOOK_LISTS = (
    *((NFPROTO_IPV4, h) for h in range(5)),
    *((NFPROTO_IPV6, h) for h in range(5)),
    *((NFPROTO_ARP, h) for h in range(3)),
    *((NFPROTO_BRIDGE, h) for h in range(5)),
)
NETDEV_HOOKS = (0, 1)
# A list this kernel does not have (egress before 5.16, a family not built), or a device that
# went away while we dumped: nothing is hooked there, nothing was missed.
ABSENT_LIST = frozenset({errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENODEV})
CHAIN_KINDS = {
    NFNL_HOOK_TYPE_NFTABLES: "nftables",
    NFNL_HOOK_TYPE_BPF: "bpf",
    NFNL_HOOK_TYPE_NFT_FLOWTABLE: "flowtable",
}


def hook_name(pf: int, hooknum: int) -> str:
    names = HOOK_NAMES.get(pf, INET_HOOKS)
    return names[hooknum] if 0 <= hooknum < len(names) else f"hook{hooknum}"


def family_name(pf: int) -> str:
    return FAMILIES.get(pf, f"pf{pf}")
