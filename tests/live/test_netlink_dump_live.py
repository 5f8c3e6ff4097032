"""Netlink dumps through kernel/netlink_dump.py (pyroute2's messages over a standard-library
socket) on this kernel: what the kernel answers, and what it refuses as one error."""

from __future__ import annotations

import errno
import socket

import pytest

from patchguard.kernel.netlink_dump import DumpError, NetlinkDump
from patchguard.kernel.pyroute2_modules import without_package_init

pytestmark = pytest.mark.live

without_package_init()
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402


def test_a_link_dump_lists_loopback_decoded_by_pyroute2() -> None:
    with NetlinkDump(socket.NETLINK_ROUTE, {RTM_NEWLINK: ifinfmsg}) as rtnl:
        links = rtnl.dump(ifinfmsg(), RTM_GETLINK, "links")
        again = rtnl.dump(ifinfmsg(), RTM_GETLINK, "links")  # one socket, several dumps
    names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in links}
    assert names[1] == "lo" and len(again) == len(links)


def test_a_request_the_kernel_refuses_is_one_error_naming_it() -> None:
    with (
        NetlinkDump(socket.NETLINK_ROUTE, {}) as rtnl,
        pytest.raises(DumpError, match=r"^message type 127: not supported") as refused,
    ):
        rtnl.dump(ifinfmsg(), 127, "message type 127")
    assert refused.value.errno == errno.EOPNOTSUPP
