"""The kernel's netfilter hook lists through nfnetlink (subsystem NFNL_SUBSYS_HOOK), the way
`nft list hooks` reads them: one dump per (family, hook number), and per device for netdev.

Message layout: include/uapi/linux/netfilter/nfnetlink_hook.h; the kernel side is
nfnl_hook_dump_one() in net/netfilter/nfnetlink_hook.c (CONFIG_NETFILTER_NETLINK_HOOK, module
nfnetlink_hook). pyroute2 knows nfgen_msg and NETLINK_NETFILTER but not this subsystem, so its
message class is declared here on top of pyroute2's codec.
"""

from __future__ import annotations

import errno
from types import TracebackType
from typing import Any

from pyroute2.netlink import NETLINK_NETFILTER, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, nla
from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError
from pyroute2.netlink.nfnetlink import nfgen_msg
from pyroute2.netlink.nlsocket import NetlinkSocket

from patchguard.kernel.errors import KernelAccessError, explain_errno

NFNL_SUBSYS_HOOK = 12  # include/uapi/linux/netfilter/nfnetlink.h; pyroute2 stops at 11
NFNL_MSG_HOOK_GET = 0
HOOK_GET = NFNL_SUBSYS_HOOK << 8 | NFNL_MSG_HOOK_GET

# enum nfnl_hook_chaintype: what NFNLA_HOOK_INFO_DESC describes.
NFNL_HOOK_TYPE_NFTABLES = 1
NFNL_HOOK_TYPE_BPF = 2
NFNL_HOOK_TYPE_NFT_FLOWTABLE = 3

# A hook list that changed while it was dumped is flagged NLM_F_DUMP_INTR; dump it again.
DUMP_ATTEMPTS = 3


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


class HookDumpError(KernelAccessError):
    """A hook dump failed; carries errno (EINVAL: no NFNL_SUBSYS_HOOK in this kernel)."""

    def __init__(self, where: str, err: int) -> None:
        super().__init__(where, explain_errno(err))
        self.errno = err


def dump_request(family: int, hooknum: int, device: str | None = None) -> Any:
    """The request nfnl_hook_get() wants: NFNLA_HOOK_HOOKNUM, and NFNLA_HOOK_DEV for netdev."""
    msg = nfhook_msg()
    msg["nfgen_family"] = family
    msg["attrs"] = [["NFNLA_HOOK_HOOKNUM", hooknum]]
    if device is not None:
        msg["attrs"].append(["NFNLA_HOOK_DEV", device])
    return msg


class HookSocket:
    """A NETLINK_NETFILTER socket that dumps hook lists; use it in a `with` block."""

    def __init__(self) -> None:
        try:
            self._sock = NetlinkSocket(family=NETLINK_NETFILTER)
        except OSError as exc:
            raise HookDumpError("socket(NETLINK_NETFILTER)", exc.errno or errno.EIO) from exc
        self._sock.register_policy({HOOK_GET: nfhook_msg})

    def dump(self, family: int, hooknum: int, device: str | None = None) -> list[Any]:
        """Every hook of one list, in the order the kernel runs them (by priority). Raises
        HookDumpError for what the kernel refused, ValueError for replies pyroute2 cannot
        decode."""
        where = f"nfnetlink hook dump (family {family}, hook {hooknum}"
        where += f", device {device})" if device else ")"
        for _ in range(DUMP_ATTEMPTS):
            try:
                msgs = list(
                    self._sock.nlm_request(
                        dump_request(family, hooknum, device),
                        HOOK_GET,
                        NLM_F_REQUEST | NLM_F_DUMP,
                    )
                )
            except NetlinkError as exc:
                raise HookDumpError(where, abs(exc.code)) from exc
            except NetlinkDecodeError as exc:
                raise ValueError(f"{where}: undecodable reply: {exc}") from exc
            if not any(m["header"]["flags"] & NLM_F_DUMP_INTR for m in msgs):
                return [m for m in msgs if m["header"]["type"] == HOOK_GET]
        raise HookDumpError(where, errno.EAGAIN)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> HookSocket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
