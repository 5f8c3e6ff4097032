"""The pyroute2 message class of the nfnetlink hook subsystem (NFNL_SUBSYS_HOOK), apart from
nfnetlink_hook.py so that importing pyroute2 waits until a hook socket is opened.

Message layout: include/uapi/linux/netfilter/nfnetlink_hook.h.
"""

from __future__ import annotations

from typing import Any

from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import nfgen_msg

from patchguard.kernel.nfnetlink_hook import NFNL_HOOK_TYPE_BPF


class nfhook_msg(nfgen_msg):  # type: ignore[misc]  # pyroute2 is untyped
    """One hook of a hook list (nfnl_hook_dump_one), or the dump request for a list."""

    prefix = "NFNLA_HOOK_"
    nla_map = (
        ("NFNLA_HOOK_UNSPEC", "none"),
        ("NFNLA_HOOK_HOOKNUM", "be32"),
        ("NFNLA_HOOK_PRIORITY", "be32"),  # the kernel's int, sent through htonl()
        ("NFNLA_HOOK_DEV", "asciiz"),
        ("NFNLA_HOOK_FUNCTION_NAME", "asciiz"),  # "%ps" of ops->hook, " [module]" cut off
        ("NFNLA_HOOK_MODULE_NAME", "asciiz"),
        ("NFNLA_HOOK_CHAIN_INFO", "chain_info"),
    )

    class chain_info(nla):  # type: ignore[misc]
        prefix = "NFNLA_HOOK_INFO_"
        nla_map = (
            ("NFNLA_HOOK_INFO_UNSPEC", "none"),
            ("NFNLA_HOOK_INFO_DESC", "info_desc"),
            ("NFNLA_HOOK_INFO_TYPE", "be32"),
        )

        # The layout of DESC depends on TYPE, which the kernel always puts first
        # (nfnl_start_info_type()); pyroute2 calls this to pick the class, on decode and encode.
        @staticmethod
        def info_desc(self: Any, *argv: Any, **kwarg: Any) -> Any:
            if self.get_attr("NFNLA_HOOK_INFO_TYPE") == NFNL_HOOK_TYPE_BPF:
                return self.bpf_desc
            return self.chain_desc

        class chain_desc(nla):  # type: ignore[misc]  # nf_tables chains and flowtables
            prefix = "NFNLA_CHAIN_"
            nla_map = (
                ("NFNLA_CHAIN_UNSPEC", "none"),
                ("NFNLA_CHAIN_TABLE", "asciiz"),
                ("NFNLA_CHAIN_FAMILY", "uint8"),
                ("NFNLA_CHAIN_NAME", "asciiz"),
            )

        class bpf_desc(nla):  # type: ignore[misc]
            prefix = "NFNLA_HOOK_BPF_"
            nla_map = (
                ("NFNLA_HOOK_BPF_UNSPEC", "none"),
                ("NFNLA_HOOK_BPF_ID", "be32"),
            )


def dump_request(family: int, hooknum: int, device: str | None = None) -> Any:
    """The request nfnl_hook_get() wants: NFNLA_HOOK_HOOKNUM, and NFNLA_HOOK_DEV for netdev."""
    msg = nfhook_msg()
    msg["nfgen_family"] = family
    msg["attrs"] = [["NFNLA_HOOK_HOOKNUM", hooknum]]
    if device is not None:
        msg["attrs"].append(["NFNLA_HOOK_DEV", device])
    return msg
