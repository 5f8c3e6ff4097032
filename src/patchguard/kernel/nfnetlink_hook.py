"""The kernel's netfilter hook lists through nfnetlink (subsystem NFNL_SUBSYS_HOOK), the way
`nft list hooks` reads them: one dump per (family, hook number), and per device for netdev.

Message layout: include/uapi/linux/netfilter/nfnetlink_hook.h; the kernel side is
nfnl_hook_dump_one() in net/netfilter/nfnetlink_hook.c (CONFIG_NETFILTER_NETLINK_HOOK, module
nfnetlink_hook). pyroute2 knows nfgen_msg and NETLINK_NETFILTER but not this subsystem, so its
message class is declared on top of pyroute2's codec, in nfnetlink_codec.py: pyroute2's package
import pulls in far more than netlink (ndb, ipdb; ~100 ms), so it is imported only when a
socket is opened.
"""

from __future__ import annotations

import errno
from types import TracebackType
from typing import Any

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


class HookDumpError(KernelAccessError):
    """A hook dump failed; carries errno (EINVAL: no NFNL_SUBSYS_HOOK in this kernel)."""

    def __init__(self, where: str, err: int) -> None:
        super().__init__(where, explain_errno(err))
        self.errno = err


class HookSocket:
    """A NETLINK_NETFILTER socket that dumps hook lists; use it in a `with` block."""

    def __init__(self) -> None:
        from patchguard.kernel.pyroute2_modules import without_package_init

        without_package_init()
        from pyroute2.netlink import NETLINK_NETFILTER
        from pyroute2.netlink.nlsocket import NetlinkSocket

        from patchguard.kernel.nfnetlink_codec import nfhook_msg

        try:
            self._sock = NetlinkSocket(family=NETLINK_NETFILTER)
        except OSError as exc:
            raise HookDumpError("socket(NETLINK_NETFILTER)", exc.errno or errno.EIO) from exc
        self._sock.register_policy({HOOK_GET: nfhook_msg})

    def dump(self, family: int, hooknum: int, device: str | None = None) -> list[Any]:
        """Every hook of one list, in the order the kernel runs them (by priority). Raises
        HookDumpError for what the kernel refused, ValueError for replies pyroute2 cannot
        decode."""
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST
        from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError

        from patchguard.kernel.nfnetlink_codec import dump_request

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
