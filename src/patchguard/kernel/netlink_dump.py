"""Netlink dumps with pyroute2's message classes and parser over a standard-library socket.

pyroute2's own sockets (IPRoute, NetlinkSocket) bring its asyncio transport along, with ssl
and pickle: twice the import of the codecs a dump needs, in every scan. The messages are still
pyroute2's, encoded and decoded by its classes and split by its Marshal; only the socket is
the standard library's. It is created in the calling thread, so in that thread's network
namespace (surfaces/ebpf/network.py joins one per thread).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from patchguard.kernel.errors import KernelAccessError, explain_errno

RECV_SIZE = 1 << 20
MAX_MESSAGES = 1 << 16  # per dump: memory stays bounded whatever the kernel sends
DUMP_ATTEMPTS = 3  # a table that changed while it was dumped (NLM_F_DUMP_INTR) is asked again


class DumpError(KernelAccessError):
    """A dump the kernel refused or ended badly; carries errno."""

    def __init__(self, where: str, err: int) -> None:
        super().__init__(where, explain_errno(err))
        self.errno = err


def _refusal(where: str, error: Exception) -> Exception:
    """The kernel's errno as a DumpError; a reply pyroute2 could not decode as ValueError."""
    code = getattr(error, "code", None) or getattr(error, "errno", None)
    if code is None:
        return ValueError(f"{where}: undecodable reply: {error}")
    return DumpError(where, abs(code))


class NetlinkDump:
    """One netlink socket of `protocol` whose replies are decoded as `policy` says (message
    type -> pyroute2 message class); use it in a `with` block."""

    def __init__(self, protocol: int, policy: Mapping[int, type[Any]]) -> None:
        from patchguard.kernel.pyroute2_modules import without_package_init

        without_package_init()  # the codec modules alone, not all of pyroute2's
        from pyroute2.netlink.marshal import Marshal

        self._marshal = Marshal()
        self._marshal.msg_map = dict(policy)
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   protocol)  # fmt: skip
        self._seq = 0

    def dump(self, msg: Any, msg_type: int, where: str) -> list[Any]:
        """Every message of the dump `msg` (a pyroute2 message, its fields set) asks for;
        DumpError for what the kernel refused, ValueError for a reply that does not decode."""
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST

        self._seq += 1
        msg["header"].update(
            type=msg_type, flags=NLM_F_REQUEST | NLM_F_DUMP, sequence_number=self._seq
        )
        msg.encode()
        request = bytes(msg.data)
        for _ in range(DUMP_ATTEMPTS):
            self._sock.send(request)
            found, interrupted = self._replies(where)
            if not interrupted:
                return found
        raise DumpError(where, errno.EAGAIN)

    def _replies(self, where: str) -> tuple[list[Any], bool]:
        """The replies up to NLMSG_DONE, and whether the kernel flagged them interrupted."""
        from pyroute2.netlink import NLM_F_DUMP_INTR, NLMSG_DONE

        found: list[Any] = []
        interrupted = False
        while len(found) <= MAX_MESSAGES:
            for reply in self._marshal.parse(self._sock.recv(RECV_SIZE)):
                header = reply["header"]
                interrupted |= bool(header["flags"] & NLM_F_DUMP_INTR)
                if header["error"] is not None:
                    raise _refusal(where, header["error"])
                if header["type"] == NLMSG_DONE:
                    return found, interrupted
                found.append(reply)
        raise DumpError(where, errno.E2BIG)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkDump:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
