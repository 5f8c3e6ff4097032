"""The netlink requests and replies patchguard packs and walks with struct (kernel/netlink.py,
kernel/rtnetlink.py, surfaces/sockets/diag.py), against pyroute2's encoder of the same
messages; the live tests (tests/live/test_ebpf_attacks_live.py, test_sockets_live.py) read
the kernel's own replies."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from patchguard.kernel import netlink, rtnetlink
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.pyroute2_modules import without_package_init
from patchguard.surfaces.sockets import diag

without_package_init()
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST  # noqa: E402
from pyroute2.netlink.diag import inet_diag_req, unix_diag_req  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.tcmsg import tcmsg  # noqa: E402

DONE = netlink.NLMSG.pack(20, netlink.NLMSG_DONE, 0, 0, 0) + b"\0" * 4


def pyroute2_diag_request(protocol: str) -> bytes:
    """The request as pyroute2 encodes it (what diag.request sent before)."""
    if protocol == "unix":
        msg = unix_diag_req()
        msg["sdiag_family"], msg["udiag_states"] = 1, diag.ALL_STATES
    else:
        family, proto = diag.INET_DUMPS[protocol]
        msg = inet_diag_req()
        msg["sdiag_family"], msg["sdiag_protocol"] = family, proto
        msg["idiag_states"] = diag.ALL_STATES
    msg["header"]["type"] = diag.SOCK_DIAG_BY_FAMILY
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg.encode()
    return bytes(msg.data)


@pytest.mark.parametrize("protocol", diag.DUMPED)
def test_sock_diag_requests_are_pyroute2s_encoding(protocol: str) -> None:
    assert diag.request(protocol) == pyroute2_diag_request(protocol)


def test_rtnetlink_requests_are_pyroute2s_encoding() -> None:
    link = ifinfmsg()
    link["header"]["type"], link["header"]["flags"] = 18, NLM_F_REQUEST | NLM_F_DUMP
    link.encode()
    assert netlink.request(18, rtnetlink.IFINFO.pack(0, 0, 0, 0, 0)) == bytes(link.data)
    tc = tcmsg()
    tc["index"], tc["parent"] = 7, 0xFFFFFFF3
    tc["header"]["type"], tc["header"]["flags"] = 46, NLM_F_REQUEST | NLM_F_DUMP
    tc.encode()
    payload = rtnetlink.TCMSG.pack(0, 7, 0, 0xFFFFFFF3, 0)
    assert netlink.request(46, payload) == bytes(tc.data)


def feed(*chunks: bytes) -> netlink.RecvInto:
    """recv_into over these datagrams, one a call."""
    left: Iterator[bytes] = iter(chunks)

    def recv_into(buf: bytearray) -> int:
        data = next(left)
        buf[: len(data)] = data
        return len(data)

    return recv_into


def new_link() -> bytes:
    msg = ifinfmsg()
    msg["index"] = 7
    msg["attrs"] = [
        ("IFLA_IFNAME", "pgv1"),
        ("IFLA_XDP", {"attrs": [("IFLA_XDP_ATTACHED", 1), ("IFLA_XDP_DRV_PROG_ID", 42)]}),
    ]
    msg["header"]["type"] = 16
    msg.encode()
    return bytes(msg.data)


def test_a_link_reply_as_pyroute2_encodes_it_is_read() -> None:
    ((buf, bodies),) = list(netlink.batches(feed(new_link() + DONE), "test"))
    (body,) = bodies
    link = rtnetlink._link(buf, *body)
    assert (link.index, link.name) == (7, "pgv1")
    assert netlink.u32(link.xdp.get(5)) == 42  # IFLA_XDP_DRV_PROG_ID
    assert netlink.u32(link.xdp.get(6)) is None


def attr(kind: int, value: bytes) -> bytes:
    padded = value + b"\0" * (-len(value) % 4)
    return struct.pack("=HH", 4 + len(value), kind) + padded


def test_a_bpf_filter_reply_is_read() -> None:
    options = attr(8, struct.pack("=I", 1)) + attr(11, struct.pack("=I", 99))
    body = rtnetlink.TCMSG.pack(0, 7, 3, 0xFFFFFFF3, 7 << 16 | 0x0300)
    body += attr(1, b"bpf\0") + attr(2 | 0x8000, options)  # TCA_OPTIONS is NLA_F_NESTED
    reply = netlink.NLMSG.pack(16 + len(body), 44, 2, 0, 0) + body
    buf, bodies = next(netlink.batches(feed(reply, DONE), "test"))  # before DONE reuses buf
    f = rtnetlink._filter(buf, *bodies[0])
    assert (f.kind, f.handle, f.info >> 16) == ("bpf", 3, 7)
    assert f.options is not None and netlink.u32(f.options.get(11)) == 99


def test_a_truncated_attribute_ends_the_walk() -> None:
    data = attr(3, b"eth0\0") + struct.pack("=HH", 40, 4) + b"\0" * 4
    assert netlink.attributes(data, 0, len(data)) == {3: b"eth0\0"}


def test_an_error_reply_an_interrupted_dump_and_a_bad_length_are_refused() -> None:
    error = netlink.NLMSG.pack(20, netlink.NLMSG_ERROR, 0, 0, 0) + struct.pack("=i", -1)
    with pytest.raises(KernelAccessError, match="EPERM"):
        list(netlink.batches(feed(error), "test"))
    interrupted = netlink.NLMSG.pack(36, 16, netlink.NLM_F_DUMP_INTR, 0, 0) + b"\0" * 20
    with pytest.raises(netlink.DumpInterrupted):
        list(netlink.batches(feed(interrupted), "test"))
    with pytest.raises(KernelAccessError, match="malformed"):
        list(netlink.batches(feed(netlink.NLMSG.pack(400, 16, 0, 0, 0)), "test"))


def test_the_loopback_device_is_listed() -> None:
    names = {link.name: link.index for link in rtnetlink.links()}
    assert names["lo"] == 1
