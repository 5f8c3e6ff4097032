"""The kernel's netfilter hook lists through nfnetlink (subsystem NFNL_SUBSYS_HOOK), the way
`nft list hooks` reads them: one dump per (family, hook number), and per device for netdev.

Message layout: include/uapi/linux/netfilter/nfnetlink_hook.h; the kernel side is
nfnl_hook_dump_one() in net/netfilter/nfnetlink_hook.c (CONFIG_NETFILTER_NETLINK_HOOK, module
nfnetlink_hook). pyroute2 knows nfgen_msg and NETLINK_NETFILTER but not this subsystem, so its
message class is declared on top of pyroute2's codec, in nfnetlink_codec.py, and dumped over a
standard-library socket (kernel/netlink_dump.py): pyroute2's package import pulls in far more
than netlink (ndb, ipdb; ~100 ms) and its sockets asyncio, so only the codec is imported, and
only when a socket is opened.
"""

from __future__ import annotations

import errno
from types import TracebackType
from typing import Any

from patchguard.kernel.netlink_dump import DumpError, NetlinkDump

NETLINK_NETFILTER = 12  # include/uapi/linux/netlink.h
NFNL_SUBSYS_HOOK = 12  # include/uapi/linux/netfilter/nfnetlink.h; pyroute2 stops at 11
NFNL_MSG_HOOK_GET = 0
HOOK_GET = NFNL_SUBSYS_HOOK << 8 | NFNL_MSG_HOOK_GET

# enum nfnl_hook_chaintype: what NFNLA_HOOK_INFO_DESC describes.
NFNL_HOOK_TYPE_NFTABLES = 1
NFNL_HOOK_TYPE_BPF = 2
NFNL_HOOK_TYPE_NFT_FLOWTABLE = 3


class HookDumpError(DumpError):
    """A hook dump failed; carries errno (EINVAL: no NFNL_SUBSYS_HOOK in this kernel)."""


class HookSocket:
    """A NETLINK_NETFILTER socket that dumps hook lists; use it in a `with` block."""

    def __init__(self) -> None:
        from patchguard.kernel.pyroute2_modules import without_package_init

        without_package_init()
        from patchguard.kernel.nfnetlink_codec import nfhook_msg

        try:
            self._sock = NetlinkDump(NETLINK_NETFILTER, {HOOK_GET: nfhook_msg})
        except OSError as exc:
            raise HookDumpError("socket(NETLINK_NETFILTER)", exc.errno or errno.EIO) from exc

    def dump(self, family: int, hooknum: int, device: str | None = None) -> list[Any]:
        """Every hook of one list, in the order the kernel runs them (by priority). Raises
        HookDumpError for what the kernel refused, ValueError for replies pyroute2 cannot
        decode."""
        from patchguard.kernel.nfnetlink_codec import dump_request

        where = f"nfnetlink hook dump (family {family}, hook {hooknum}"
        where += f", device {device})" if device else ")"
        try:
            msgs = self._sock.dump(dump_request(family, hooknum, device), HOOK_GET, where)
        except DumpError as exc:
            raise HookDumpError(where, exc.errno) from exc
        return [m for m in msgs if m["header"]["type"] == HOOK_GET]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> HookSocket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
