"""The sockets surface without the live kernel: the /proc/net parsers on files captured on the
6.18 "fc" machine while known sockets were open (tcp 127.0.0.1:8080 listening with one
connection and one closed into TIME_WAIT, tcp6 [::1]:8443 v6-only and [::]:9000, udp
127.0.0.53:53, udp6 [::1]:5353 connected to [::1]:53, raw ICMP and ICMPv6, unix @patchguard-test
listening and /tmp/pg-test.sock datagram), the cross-view on real-shaped entries, the probe
plan, owners and namespaces from a /proc tree of real symlinks, collect() on the captured
tree, and the finding."""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
from pathlib import Path

import pytest

from patchguard.findings import Disposition, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.bpf.insn import BPF_EXIT, BPF_JMP, decode
from patchguard.kernel.btf import Btf
from patchguard.surfaces.base import Status
from patchguard.surfaces.sockets import (
    BIND_PROBE,
    PROC_NET,
    SOCK_DIAG,
    HiddenSocket,
    Look,
    Netns,
    Owner,
    SocketEntry,
    SocketsSurface,
    assess_hidden,
    disagreements,
    settle,
    shown,
)
from patchguard.surfaces.sockets.addresses import endpoint
from patchguard.surfaces.sockets.collect import _protocols_of, _suspect_ports
from patchguard.surfaces.sockets.crossview import Suspect, counted
from patchguard.surfaces.sockets.fd_iter import FileOffsets, fd_iter_program
from patchguard.surfaces.sockets.owners import OwnerMap, named_netns, namespaces, read_owners
from patchguard.surfaces.sockets.probe import probe_plan
from patchguard.surfaces.sockets.procnet import parse, parse_sockstat
from patchguard.surfaces.sockets.sock_iter import (
    RECORD,
    SockOffsets,
    parse_records,
    sock_iter_program,
)

FC = Path(__file__).parent.parent / "fixtures/6.18-fc"
NET = FC / "proc/net"


def entries(protocol: str) -> list[SocketEntry]:
    return parse(protocol, (NET / protocol).read_text())


def one(protocol: str, local: str, state: str | None = None) -> SocketEntry:
    found = [e for e in entries(protocol) if e.local == local and state in (None, e.state)]
    assert len(found) == 1, found
    return found[0]


# --- parsers ------------------------------------------------------------------------------------


def test_endpoints_in_host_order_words() -> None:
    assert endpoint("0100007F:1F90") == ("127.0.0.1", 8080)
    assert endpoint("00000000000000000000000001000000:20FB") == ("::1", 8443)
    with pytest.raises(ValueError, match="address:port"):
        endpoint("7F:1F90")


def test_tcp_listener_connection_and_time_wait() -> None:
    listener = one("tcp", "127.0.0.1:8080", "LISTEN")
    assert listener.remote == "0.0.0.0:0" and listener.inode > 0 and listener.local_port == 8080
    connected = [e for e in entries("tcp") if e.remote == "127.0.0.1:8080"]
    assert {e.state for e in connected} >= {"ESTABLISHED"}
    waiting = [e for e in entries("tcp") if e.state == "TIME_WAIT"]
    assert waiting and all(e.timewait and e.inode == 0 and not e.counted for e in waiting)
    assert listener.counted and not listener.timewait


def test_tcp6_udp_raw() -> None:
    assert one("tcp6", "[::1]:8443").state == "LISTEN"
    assert one("tcp6", "[::]:9000").state == "LISTEN"
    assert one("udp", "127.0.0.53:53").state == "UNCONN"
    udp6 = one("udp6", "[::1]:5353")
    assert (udp6.remote, udp6.state) == ("[::1]:53", "ESTABLISHED")
    assert one("raw", "0.0.0.0:1").state == "UNCONN"  # ICMP: the protocol in the port column
    assert one("raw6", "[::]:58").protocol == "raw6"


def test_unix_names_and_listening_flag() -> None:
    abstract = one("unix", "@patchguard-test")
    assert abstract.state == "LISTEN" and abstract.key == ("unix", abstract.inode)
    assert one("unix", "/tmp/pg-test.sock").state == "UNCONNECTED"


def test_every_captured_file_parses() -> None:
    for protocol in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"):
        assert all(e.protocol == protocol for e in entries(protocol))


@pytest.mark.parametrize(
    ("protocol", "text", "match"),
    [
        ("tcp", "", "header"),
        ("tcp", "  sl  local_address rem_address\n   0: 0100007F:1F90\n", "socket line"),
        ("tcp", "  sl  local_address\n 0: ZZ:1 00000000:0000 0A a b c d e 5\n", "address"),
        ("unix", "Inode Path\n", "Num"),
        ("unix", "Num RefCount\n0000: 2 0\n", "unix socket line"),
    ],
)
def test_bad_files_are_refused(protocol: str, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(protocol, text)


def test_sockstat_counts() -> None:
    counts = parse_sockstat((NET / "sockstat").read_text() + (NET / "sockstat6").read_text())
    assert set(counts) == {"tcp", "udp", "tcp6", "udp6"}
    assert counts["udp"] == len(entries("udp")) and counts["udp6"] == len(entries("udp6"))
    assert counts["tcp6"] == len(entries("tcp6"))
    with pytest.raises(ValueError, match="count"):
        parse_sockstat("TCP: inuse many\n")


# --- cross-view on real-shaped entries ----------------------------------------------------------


def two_views(hide: SocketEntry | None = None, view: str = PROC_NET) -> Look:
    """proc_net and sock_diag both listing the captured sockets, one of them minus `hide`."""
    look = Look()
    for name in (PROC_NET, SOCK_DIAG):
        for protocol in ("tcp", "tcp6", "udp", "udp6", "unix"):
            listed = [e for e in entries(protocol) if not (name == view and e == hide)]
            look.add(name, protocol, listed)
    return look


def test_views_that_agree_have_nothing_to_say() -> None:
    assert disagreements(two_views()) == {}


@pytest.mark.parametrize("view", [PROC_NET, SOCK_DIAG])
def test_a_socket_one_view_hides(view: str) -> None:
    hidden = one("tcp", "127.0.0.1:8080", "LISTEN")
    found = disagreements(two_views(hidden, view))
    other = SOCK_DIAG if view == PROC_NET else PROC_NET
    assert list(found) == [hidden.key]
    assert found[hidden.key].seen_by == (other,) and found[hidden.key].missing_from == (view,)


def test_the_probe_confirms_a_hidden_socket_port() -> None:
    hidden = one("tcp", "127.0.0.1:8080", "LISTEN")
    look = two_views(hidden)
    look.ports["tcp"] = {8080}
    assert disagreements(look)[hidden.key].seen_by == (SOCK_DIAG, BIND_PROBE)


def test_a_view_that_did_not_read_a_protocol_is_not_blamed() -> None:
    look = two_views()
    look.add(PROC_NET, "raw", entries("raw"))  # sock_diag could not dump raw sockets
    assert disagreements(look) == {}


def test_bound_only_tcp_socket_is_not_compared() -> None:
    look = two_views()
    bound = SocketEntry(
        "tcp", "BOUND_INACTIVE", 4242, 7777, False, "0100007F:1E61", "00000000:0000"
    )
    look.add(SOCK_DIAG, "tcp", [bound])  # sock_diag dumps it, /proc/net/tcp never prints it
    assert disagreements(look) == {}
    look.ports["tcp"] = {7777}  # and the probe's refused bind on it is explained by it
    assert disagreements(look) == {}


def test_time_wait_sockets_are_not_compared_but_explain_their_port() -> None:
    waiting = next(e for e in entries("tcp") if e.timewait)
    look = Look()
    look.add(PROC_NET, "tcp", entries("tcp"))
    look.add(SOCK_DIAG, "tcp", [e for e in entries("tcp") if e != waiting])
    assert disagreements(look) == {}
    assert look.timewaits[PROC_NET] == look.timewaits[SOCK_DIAG] + 1
    look.ports["tcp"] = {waiting.local_port or 0}
    assert disagreements(look) == {}


def test_a_port_in_use_that_no_view_lists() -> None:
    look = two_views()
    look.ports = {"tcp": {8080, 9000, 31337}, "udp": {53}}
    found = disagreements(look)
    assert list(found) == [("tcp", "*:31337")]
    suspect = found[("tcp", "*:31337")]
    assert suspect.seen_by == (BIND_PROBE,) and suspect.missing_from == (PROC_NET, SOCK_DIAG)
    assert suspect.entry.local_port == 31337


def test_settle_drops_a_socket_that_closed_between_views() -> None:
    listener = one("tcp", "127.0.0.1:8080", "LISTEN")
    closed = listener._replace(inode=listener.inode + 1_000_000)
    first = two_views(listener)
    first.add(SOCK_DIAG, "tcp", [closed])  # in the dump, gone before /proc/net was read
    looks: list[int] = []

    def again(suspects: object) -> Look:
        looks.append(1)
        return two_views(listener)  # the hidden one is still hidden; the closed one is gone

    confirmed = settle(disagreements(first), again)
    assert list(confirmed) == [listener.key] and looks == [1]


def test_settle_takes_no_second_look_when_all_agree() -> None:
    def again(suspects: object) -> Look:
        raise AssertionError("no second look without suspects")

    assert settle(disagreements(two_views()), again) == {}


def test_counted_sockets_per_view() -> None:
    look = two_views()
    assert counted(look, PROC_NET)["udp"] == len(entries("udp"))
    assert counted(look, PROC_NET)["tcp"] < len(entries("tcp"))  # TIME_WAIT is not in use


def test_probe_plan() -> None:
    assert probe_plan("none", {"tcp": 9}, {}) == {}
    assert set(probe_plan("all", {}, {})) == {"tcp", "udp"}
    assert probe_plan("auto", {"tcp": 3, "udp": 1}, {"tcp": 3, "udp": 1}) == {}
    plan = probe_plan("auto", {"tcp": 3, "tcp6": 2, "udp": 1}, {"tcp": 3, "tcp6": 1, "udp": 1})
    assert list(plan) == ["tcp"] and "tcp6: sockstat says 2 in use, the views list 1" in plan["tcp"]


# --- owners and namespaces from a /proc tree of real symlinks -----------------------------------


def test_owners_from_fd_links(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, links in ((10, ["socket:[500]", "socket:[500]", "/dev/null"]), (11, ["socket:[500]"])):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(f"d\x1b[31m{pid}\n")
        for fd, target in enumerate(links):
            (proc / str(pid) / "fd" / str(fd)).symlink_to(target)
    (proc / "12").mkdir()  # no fd directory: unreadable, said so
    owners = read_owners(proc)
    assert owners.of(500) == (Owner(10, "d\x1b[31m10", 2), Owner(11, "d\x1b[31m11", 1))
    assert owners.of(0) == () and owners.of(501) == ()
    assert list(owners.unreadable) == [12]
    assert owners.unreadable[12].startswith("fd: ")


def test_namespaces_deduplicated_by_inode(tmp_path: Path) -> None:
    run = tmp_path / "netns"
    run.mkdir()
    (run / "blue").write_text("")
    os.link(run / "blue", run / "blue2")  # two names, one inode
    blue = os.stat(run / "blue").st_ino
    named = named_netns(run)
    assert named == {blue: ["blue", "blue2"]}
    m = OwnerMap(netns_of={1: 7, 2: 7, 3: blue})
    found = namespaces(m, named, own=7)
    assert found == [Netns(7, (), 2, True), Netns(blue, ("blue", "blue2"), 1, False)]
    assert found[1].label == f"net:[{blue}] (blue, blue2)"
    assert named_netns(tmp_path / "none") == {}


# --- collect on the captured tree, and the finding ----------------------------------------------


def test_collect_on_captured_tree() -> None:
    surface = SocketsSurface()
    state = surface.collect(Kernel(FC))
    views = state.records.namespaces
    assert len(views) == 1 and views[0].sock_diag is None and views[0].probed_ports == 0
    protocols = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix")
    assert views[0].proc_net == sum(len(entries(p)) for p in protocols)
    assert views[0].probe == "not probed: a captured tree"
    listeners = {(r.protocol, r.local) for r in state.records.listeners}
    assert {("tcp", "127.0.0.1:8080"), ("tcp6", "[::1]:8443"), ("udp", "127.0.0.53:53")} <= (
        listeners
    )
    assert ("unix", "@patchguard-test") in listeners
    assert state.status is Status.PARTIAL and [g.what for g in state.gaps] == [
        "sock_diag, BPF socket iterators, bind probe and other namespaces"
    ]
    assert surface.assess(state) == [] and state.counts["hidden"] == 0


def test_collect_without_proc_net(tmp_path: Path) -> None:
    state = SocketsSurface().collect(Kernel(tmp_path))
    assert not state.records and state.status is Status.UNAVAILABLE
    assert "proc_net tcp in net:[0]" in [g.what for g in state.gaps]


def test_unknown_probe_mode() -> None:
    with pytest.raises(ValueError, match="probe mode"):
        SocketsSurface("sometimes")


NS = Netns(4026532001, ("blue",), 1)


def hidden(**changes: object) -> HiddenSocket:
    base = HiddenSocket(
        NS, "tcp", "0.0.0.0:31337", "0.0.0.0:0", "LISTEN", 777, (SOCK_DIAG,), (PROC_NET,),
        (Owner(4242, "back\x07door"),), 31337,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_hidden_socket_finding() -> None:
    finding = assess_hidden(hidden())
    assert finding.severity is Severity.HIGH and finding.technique == "hidden-socket"
    assert finding.disposition is Disposition.TAMPERING and finding.attack_id == "T1014"
    assert finding.subject == "tcp 0.0.0.0:31337 in net:[4026532001] (blue)"
    for part in ("pid 4242 (back\\x07door)", "seen by sock_diag", "hidden from proc_net"):
        assert part in finding.summary
    assert "\x07" not in finding.summary
    assert finding.evidence["port"] == 31337 and finding.evidence["owner_pids"] == [4242]
    assert finding.evidence["netns_names"] == ["blue"]


def test_probe_only_finding() -> None:
    probe_only = hidden(
        local="*:31337", remote="", state="IN_USE", inode=0, seen_by=(BIND_PROBE,),
        missing_from=(PROC_NET, SOCK_DIAG), owners=(),
    )  # fmt: skip
    finding = assess_hidden(probe_only)
    assert finding.subject == "tcp port 31337 in net:[4026532001] (blue)"
    assert "EADDRINUSE" in finding.summary and "proc_net, sock_diag" in finding.summary


def test_unnamed_unix_socket_finding() -> None:
    unix = hidden(protocol="unix", local="", remote="", state="LISTEN", port=None)
    finding = assess_hidden(unix)
    assert finding.subject == "unix inode 777 in net:[4026532001] (blue)"


def test_shown_makes_control_characters_visible() -> None:
    assert shown("a\nb\x1b") == "a\\x0ab\\x1b" and shown("plain") == "plain"


# --- the BPF socket iterators: offsets, program, records ----------------------------------------

VMLINUX = FC / "sys/kernel/btf/vmlinux.gz"


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return Btf.parse(gzip.decompress(VMLINUX.read_bytes()))


def test_sock_offsets_from_btf(vmlinux: Btf) -> None:
    off = SockOffsets.from_btf(vmlinux)
    # struct sock_common on 6.18 (pahole): daddr 0, rcv_saddr 4, dport 12, num 14, family 16,
    # state 18, v6_daddr 56, v6_rcv_saddr 72; sock.sk_ino 608; socket_alloc.vfs_inode 128 +
    # inode.i_ino 64.
    assert (off.daddr, off.saddr, off.dport, off.num, off.family, off.state) == (
        0,
        4,
        12,
        14,
        16,
        18,
    )
    assert (off.v6_daddr, off.v6_saddr, off.sk_ino, off.socket_ino) == (56, 72, 608, 192)


@pytest.mark.parametrize("cached_inode", [True, False])
def test_sock_iter_program_jumps_land_on_the_exit(vmlinux: Btf, cached_inode: bool) -> None:
    off = SockOffsets.from_btf(vmlinux)
    if not cached_inode:
        off = dataclasses.replace(off, sk_ino=None)
    insns = decode(sock_iter_program(off, 3, 4))
    exit_at = len(insns) - 1
    assert insns[-1][0] == BPF_JMP | BPF_EXIT
    jumps = [(i, o) for i, (code, *_rest, o, _imm) in enumerate(insns) if code & 0x07 == BPF_JMP
             and code not in (BPF_JMP | BPF_EXIT, BPF_JMP | 0x80)]  # fmt: skip
    assert jumps and all(i + 1 + o == exit_at - 1 for i, o in jumps)  # r0 = 0; exit


def test_sock_iter_records() -> None:
    lo4, any4 = socket.inet_pton(socket.AF_INET, "127.0.0.1"), bytes(4)
    lo6 = socket.inet_pton(socket.AF_INET6, "::1")
    raw = b"".join(
        [
            RECORD.pack(77, socket.AF_INET, 8080, b"\0\0", 10, lo4, any4, bytes(16), bytes(16)),
            RECORD.pack(0, socket.AF_INET, 8080, b"\xd4\x31", 6, lo4, lo4, bytes(16), bytes(16)),
            RECORD.pack(78, socket.AF_INET6, 53, b"\0\x35", 1, any4, any4, lo6, lo6),
        ]
    )
    tcp = parse_records("tcp", raw[: 2 * RECORD.size])
    assert [(e.protocol, e.local, e.state, e.inode, e.timewait) for e in tcp] == [
        ("tcp", "127.0.0.1:8080", "LISTEN", 77, False),
        ("tcp", "127.0.0.1:8080", "TIME_WAIT", 0, True),
    ]
    assert tcp[1].remote == "127.0.0.1:54321"
    (udp6,) = parse_records("udp", raw[2 * RECORD.size :])
    assert (udp6.protocol, udp6.local, udp6.remote, udp6.state) == (
        "udp6", "[::1]:53", "[::1]:53", "ESTABLISHED",
    )  # fmt: skip
    unix = RECORD.pack(99, socket.AF_UNIX, 0, b"\0\0", 10, any4, any4, bytes(16), bytes(16))
    assert parse_records("unix", unix) == [SocketEntry("unix", "LISTEN", 99)]


def test_iterator_rows_key_like_the_proc_rows() -> None:
    """A socket without an inode is told apart by addresses in /proc/net's form, whichever
    view read it: the iterator's bytes give the captured file's spelling."""
    waiting = next(e for e in entries("tcp") if e.inode == 0)
    host, port = waiting.local.rsplit(":", 1)
    rhost, rport = waiting.remote.rsplit(":", 1)
    raw = RECORD.pack(
        0, socket.AF_INET, int(port), int(rport).to_bytes(2, "big"), 6,
        socket.inet_pton(socket.AF_INET, host), socket.inet_pton(socket.AF_INET, rhost),
        bytes(16), bytes(16),
    )  # fmt: skip
    (walked,) = parse_records("tcp", raw)
    assert walked.key == waiting.key


def test_file_offsets_from_btf(vmlinux: Btf) -> None:
    # struct file.f_inode 32, struct inode i_mode 0 and i_ino 64, task_struct.tgid 1268 (6.18)
    assert FileOffsets.from_btf(vmlinux) == FileOffsets(32, 0, 64, 1268)


def test_fd_iter_program_jumps_land_on_the_exit(vmlinux: Btf) -> None:
    insns = decode(fd_iter_program(FileOffsets.from_btf(vmlinux), 3, 4))
    exit_at = len(insns) - 1
    jumps = [(i, o) for i, (code, *_rest, o, _imm) in enumerate(insns) if code & 0x07 == BPF_JMP
             and code not in (BPF_JMP | BPF_EXIT, BPF_JMP | 0x80)]  # fmt: skip
    assert len(jumps) == 7 and all(i + 1 + o == exit_at - 1 for i, o in jumps)
    # the socket test: i_mode & S_IFMT != S_IFSOCK leaves the file out
    assert any(code == BPF_JMP | 0x50 and imm == 0o140000 for code, _, _, _, imm in insns)


def test_a_second_look_reads_only_what_the_suspects_need() -> None:
    listener = one("tcp6", "[::1]:8443")
    port_only = SocketEntry("udp", "IN_USE", 0, 5353)
    suspects = {
        listener.key: Suspect(listener, (SOCK_DIAG,), (PROC_NET,)),
        ("udp", "*:5353"): Suspect(port_only, (BIND_PROBE,), (PROC_NET, SOCK_DIAG)),
    }
    # a port only the probe found: both families' listings decide whether it is listed
    assert _protocols_of(suspects) == ["tcp6", "udp", "udp6"]
    assert _suspect_ports(suspects) == {"tcp": [8443], "udp": [5353]}
