"""eBPF attacks beyond syscall hooks, on the running kernel, through `patchguard scan --json`:
a uprobe on a PAM-like library (credential theft), an XDP program on a veth in a throwaway
network namespace, a tc classifier only a tc filter keeps, and a tracepoint program on
tcp:tcp_receive_reset (a covert trigger). Each is attached the way real tools attach it and
removed in a finally."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp
from support import netns
from support.ebpf_scan import findings_for, programs, scan_json

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.objects import all_maps

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


PAM_SOURCE = """
int pam_get_authtok(void *pamh, int item, const char **authtok, const char *prompt)
{
    (void)pamh; (void)item; (void)prompt;
    *authtok = "hunter2";
    return 0;
}
int pam_sm_authenticate(void *pamh, int flags, int argc, const char **argv)
{
    (void)pamh; (void)flags; (void)argc; (void)argv;
    return 0;
}
"""


@pytest.fixture
def pam_library(tmp_path: Path) -> Path:
    """A shared library named like PAM's with PAM's password function, built with gcc."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (scripts/setup --dev installs it)")
    source = tmp_path / "pam.c"
    source.write_text(PAM_SOURCE)
    library = tmp_path / "libpam.so.0"
    cmd = ["gcc", "-shared", "-fPIC", "-O1", "-Wl,--build-id", "-o", str(library), str(source)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return library


def file_offset(library: Path, function: str) -> int:
    """The file offset of `function` (what the kernel's uprobe wants): its address in .dynsym
    through the PT_LOAD segment that holds it."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with library.open("rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        assert isinstance(dynsym, SymbolTableSection)
        [symbol] = dynsym.get_symbol_by_name(function) or []
        vaddr = symbol["st_value"]
        for seg in elf.iter_segments():
            if (
                seg["p_type"] == "PT_LOAD"
                and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]
            ):
                return int(vaddr - seg["p_vaddr"] + seg["p_offset"])
    raise AssertionError(f"{function} is in no PT_LOAD segment")


def build_id(library: Path) -> str:
    out = subprocess.run(
        ["readelf", "-n", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return next(line.split()[-1] for line in out.splitlines() if "Build ID" in line)


def one(items: list[dict[str, Any]], technique: str) -> dict[str, Any]:
    found = [f for f in items if f["technique"] == technique]
    assert len(found) == 1, (technique, [f["technique"] for f in items])
    return found[0]


def test_uprobe_on_pam_get_authtok_is_credential_theft(pam_library: Path) -> None:
    offset = file_offset(pam_library, "pam_get_authtok")
    with bp.attach_uprobe(str(pam_library), offset, "pg_t_pam_authtok") as prog:
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
        found = findings_for(doc, prog.prog_id)
    spelled = f"{pam_library}+{offset:#x} (pam_get_authtok+0x0)"
    # one attachment: the perf_event link, not the link and its perf event again
    [attachment] = record["attachments"]
    assert attachment["target"] == f"uprobe:{spelled}"
    assert attachment["uprobe"]["build_id"] == build_id(pam_library)
    theft = one(found, "uprobe-credential-theft")
    assert theft["severity"] == "high" and theft["attack_id"] == "T1056"
    assert spelled in theft["summary"] and "passwords" in theft["summary"]
    assert theft["evidence"]["probed_file"] == str(pam_library)
    assert theft["evidence"]["symbol"] == "pam_get_authtok+0x0"
    # one owner for this process, with both its fds (program and perf event)
    [owner] = record["owners"]
    assert owner["pid"] == os.getpid() and owner["fd_count"] >= 2


def test_uprobe_multi_link_lists_each_offset(pam_library: Path) -> None:
    offsets = [file_offset(pam_library, f) for f in ("pam_get_authtok", "pam_sm_authenticate")]
    with bp.attach_uprobe_multi(str(pam_library), offsets, "pg_t_pam_multi") as prog:
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
    targets = sorted(a["target"] for a in record["attachments"])
    assert targets == sorted(
        [
            f"uprobe:{pam_library}+{offsets[0]:#x} (pam_get_authtok+0x0)",
            f"uprobe:{pam_library}+{offsets[1]:#x} (pam_sm_authenticate+0x0)",
        ]
    )
    assert {a["link_type"] for a in record["attachments"]} == {"uprobe_multi"}


@pytest.fixture
def writable_tracefs(tmp_path: Path) -> Iterator[Path]:
    """A second, read-write mount of tracefs (patchguard mounts its own read-only): every
    mount shows the same events, so one defined here is seen at /sys/kernel/tracing."""
    where = tmp_path / "tracefs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(where)], check=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)


def define(events: Path, line: str) -> None:
    """One write, appending (tracefs files cannot seek, which Python's "a" mode does)."""
    fd = os.open(events, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def test_tracefs_uprobe_event_on_pam_is_credential_theft(
    pam_library: Path, writable_tracefs: Path
) -> None:
    offset = file_offset(pam_library, "pam_get_authtok")
    events = writable_tracefs / "uprobe_events"
    define(events, f"p:pgtest/pam_authtok {pam_library}:{offset:#x}")
    try:
        doc = scan_json("tracing")
    finally:
        define(events, "-:pgtest/pam_authtok")
    [theft] = [f for f in doc["findings"] if f["subject"] == "pgtest/pam_authtok"]
    spelled = f"{pam_library}+{offset:#x} (pam_get_authtok+0x0)"
    assert theft["technique"] == "uprobe-credential-theft" and theft["severity"] == "high"
    assert spelled in theft["summary"] and theft["evidence"]["target"] == spelled
    assert theft["evidence"]["build_id"] == build_id(pam_library)


@pytest.fixture
def namespace() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.fail("iproute2 is needed (scripts/setup --dev installs it)")
    with netns.veth_namespace() as name:
        yield name


def test_xdp_on_a_veth_in_a_throwaway_namespace(namespace: str) -> None:
    prog = bp.load(bp.BPF_PROG_TYPE_XDP, bp.xdp_backdoor(), "pg_t_xdp_door")
    try:
        netns.attach_xdp(namespace, "pgv1", prog.prog_fd, "native")
        prog.close()  # only the XDP attachment keeps it now
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
        found = findings_for(doc, prog.prog_id)
    finally:
        prog.close()
    [attachment] = record["attachments"]
    net = attachment["net"]
    assert (net["device"], net["netns"], net["mode"]) == ("pgv1", namespace, "native")
    assert attachment["target"] == f"xdp on pgv1 in netns {namespace} ingress (native)"
    tamper = one(found, "packet-tamper")
    assert "bpf_xdp_adjust_tail" in tamper["summary"] and "bpf_csum_diff" in tamper["summary"]
    assert one(found, "covert-trigger")["severity"] == "medium"
    orphan = one(found, "orphan-program")
    assert f"XDP attachment (xdp on pgv1 in netns {namespace}" in orphan["summary"]


def test_tc_classifier_kept_only_by_its_filter(namespace: str) -> None:
    prog = bp.load(bp.BPF_PROG_TYPE_SCHED_CLS, bp.tc_rewriter(), "pg_t_tc_rewrite")
    try:
        netns.attach_tc(namespace, "pgv0", prog.prog_fd, "egress", prio=7, handle=3)
        prog.close()
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
        found = findings_for(doc, prog.prog_id)
    finally:
        prog.close()
    assert record["owners"] == [] and record["pins"] == []
    [attachment] = record["attachments"]
    net = attachment["net"]
    assert (net["device"], net["netns"], net["direction"]) == ("pgv0", namespace, "egress")
    assert (net["priority"], net["handle"], net["kept_by"]) == (7, "0x3", "tc filter")
    orphan = one(found, "orphan-program")
    assert "kept alive only by tc filter" in orphan["summary"]
    assert f"pgv0 in netns {namespace} egress prio 7" in orphan["summary"]
    tamper = one(found, "packet-tamper")
    for helper in ("bpf_skb_store_bytes", "bpf_l4_csum_replace", "bpf_redirect"):
        assert helper in tamper["summary"]


def test_tracepoint_on_tcp_receive_reset_is_a_covert_trigger() -> None:
    with bp.attach_tracepoint("tcp", "tcp_receive_reset", "pg_t_rst_trigger") as prog:
        doc = scan_json()
        found = findings_for(doc, prog.prog_id)
    trigger = one(found, "covert-trigger")
    assert trigger["severity"] == "medium" and trigger["attack_id"] == "T1205"
    assert "tracepoint:tcp_receive_reset" in trigger["summary"]
    assert "remote trigger" in trigger["summary"]


def test_netns_link_names_its_namespace(namespace: str) -> None:
    prog = bp.load(
        bp.BPF_PROG_TYPE_SK_LOOKUP,
        bp.mov64_imm(0, 1) + bp.exit_insn(),
        "pg_t_sklookup_ns",
        expected_attach_type=bp.BPF_SK_LOOKUP,
    )
    with prog:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            prog.fds.append(bp.bpf.link_create(prog.prog_fd, fd, bp.BPF_SK_LOOKUP))
        finally:
            os.close(fd)
        record = programs(scan_json())[prog.prog_id]
    [attachment] = record["attachments"]
    assert attachment["target"] == f"sk_lookup in netns {namespace}"


BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_CGROUP_INET_INGRESS = 0


def cgroup2_mount() -> Path:
    from patchguard.kernel.mounts import mounted_types

    points = mounted_types(Path("/proc/self/mountinfo").read_text())
    found = [Path(p) for p, fstype in points.items() if fstype == "cgroup2"]
    if not found:
        pytest.fail("no cgroup2 mount")
    return found[0]


def test_cgroup_skb_link_names_the_cgroup_path() -> None:
    group = cgroup2_mount() / f"pgtest-{os.getpid()}"
    group.mkdir()
    try:
        prog = bp.load(BPF_PROG_TYPE_CGROUP_SKB, bp.mov64_imm(0, 1) + bp.exit_insn(), "pg_t_cg")
        with prog:
            fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
            try:
                prog.fds.append(bp.bpf.link_create(prog.prog_fd, fd, BPF_CGROUP_INET_INGRESS))
            finally:
                os.close(fd)
            record = programs(scan_json())[prog.prog_id]
    finally:
        group.rmdir()
    [attachment] = record["attachments"]
    assert attachment["target"] == f"cgroup on {group} inet_ingress"


BPF_PROG_TYPE_FLOW_DISSECTOR = 22
BPF_FLOW_DISSECTOR = 17  # enum bpf_attach_type
BPF_PROG_ATTACH = 8


def test_flow_dissector_attached_without_a_link(namespace: str) -> None:
    """BPF_PROG_ATTACH puts a flow dissector on the caller's network namespace: attached from
    a thread inside the throwaway one, then every fd closed."""
    prog = bp.load(BPF_PROG_TYPE_FLOW_DISSECTOR, bp.return_zero(), "pg_t_flow")
    try:
        attr = struct.pack("<IIII", 0, prog.prog_fd, BPF_FLOW_DISSECTOR, 0)
        netns.in_netns(namespace, lambda: bp.bpf.sys_bpf(BPF_PROG_ATTACH, attr, "PROG_ATTACH"))
        prog.close()
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
        found = findings_for(doc, prog.prog_id)
    finally:
        prog.close()
    [attachment] = record["attachments"]
    assert attachment["target"] == f"flow_dissector in netns {namespace}"
    orphan = one(found, "orphan-program")
    assert f"flow dissector attachment (flow_dissector in netns {namespace})" in orphan["summary"]
    assert one(found, "covert-trigger")["severity"] == "medium"


BPF_PROG_TYPE_SK_MSG = 16
BPF_MAP_TYPE_SOCKMAP = 15
BPF_SK_MSG_VERDICT = 7
SK_PASS = 1


def test_sk_msg_attached_to_a_sockmap_without_a_link() -> None:
    table = bpf.map_create(BPF_MAP_TYPE_SOCKMAP, 4, 4, 1, "pg_t_sockmap")
    prog = bp.load(BPF_PROG_TYPE_SK_MSG, bp.mov64_imm(0, SK_PASS) + bp.exit_insn(), "pg_t_skmsg")
    try:
        attr = struct.pack("<IIII", table, prog.prog_fd, BPF_SK_MSG_VERDICT, 0)
        bpf.sys_bpf(BPF_PROG_ATTACH, attr, "PROG_ATTACH")
        prog.close()  # the map holds it now
        map_id = next(m.map_id for m in all_maps() if m.name == "pg_t_sockmap")
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
    finally:
        prog.close()
        os.close(table)
    [attachment] = record["attachments"]
    assert attachment["target"] == f"sockmap on map {map_id} (pg_t_sockmap) sk_msg_verdict"
    assert f"sockmap (sockmap on map {map_id}" in record["kept_by"][0]


BPF_TCX_INGRESS = 46


def test_tcx_link_names_device_namespace_and_direction(namespace: str) -> None:
    prog = bp.load(bp.BPF_PROG_TYPE_SCHED_CLS, bp.return_zero(), "pg_t_tcx")
    with prog:

        def attach() -> int:
            index = socket.if_nametoindex("pgv0")  # asked in the namespace's own socket
            return bpf.link_create(prog.prog_fd, index, BPF_TCX_INGRESS)

        prog.fds.append(netns.in_netns(namespace, attach))
        record = programs(scan_json())[prog.prog_id]
    [attachment] = record["attachments"]
    assert attachment["via"] == "link" and attachment["link_type"] == "tcx"
    assert attachment["target"] == f"tcx on pgv0 in netns {namespace} ingress"


def test_cgroup_skb_attached_without_a_link_is_kept_by_its_cgroup() -> None:
    group = cgroup2_mount() / f"pgtest-{os.getpid()}-attach"
    group.mkdir()
    try:
        prog = bp.load(BPF_PROG_TYPE_CGROUP_SKB, bp.mov64_imm(0, 1) + bp.exit_insn(), "pg_t_cga")
        with prog:
            fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
            try:
                attr = struct.pack("<IIII", fd, prog.prog_fd, BPF_CGROUP_INET_INGRESS, 0)
                bpf.sys_bpf(BPF_PROG_ATTACH, attr, "PROG_ATTACH")
            finally:
                os.close(fd)
            prog.close()  # only the cgroup keeps it now
            doc = scan_json()
            record = programs(doc)[prog.prog_id]
            found = findings_for(doc, prog.prog_id)
    finally:
        group.rmdir()  # removing the cgroup detaches the program
    [attachment] = record["attachments"]
    assert attachment["target"] == f"cgroup on {group} inet_ingress"
    assert (
        f"kept alive only by cgroup (cgroup on {group} inet_ingress)"
        in one(found, "orphan-program")["summary"]
    )


BPF_XDP = 37  # enum bpf_attach_type


def test_xdp_link_is_named_once_by_device(namespace: str) -> None:
    """An XDP program attached through a BPF link shows in IFLA_XDP too: one attachment, the
    link's, named by device and namespace (not `ifindex N`)."""
    prog = bp.load(bp.BPF_PROG_TYPE_XDP, bp.xdp_backdoor(), "pg_t_xdp_link")
    with prog:

        def attach() -> int:
            return bpf.link_create(prog.prog_fd, socket.if_nametoindex("pgv1"), BPF_XDP)

        prog.fds.append(netns.in_netns(namespace, attach))
        record = programs(scan_json())[prog.prog_id]
    [attachment] = record["attachments"]
    assert (attachment["via"], attachment["link_type"]) == ("link", "xdp")
    assert attachment["target"].startswith(f"xdp on pgv1 in netns {namespace} ingress (")
    assert attachment["net"]["mode"] in ("native", "generic")


BPF_PROG_TYPE_SOCKET_FILTER = 1
SO_ATTACH_BPF = 50


def test_socket_filter_kept_by_its_socket() -> None:
    prog = bp.load(BPF_PROG_TYPE_SOCKET_FILTER, bp.return_zero(), "pg_t_sockfilt")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog.prog_fd)
        prog.close()  # the socket keeps it
        doc = scan_json()
        found = findings_for(doc, prog.prog_id)
    finally:
        sock.close()
        prog.close()
    orphan = one(found, "orphan-program")
    assert "kept by the socket it was attached to (SO_ATTACH_BPF)" in orphan["summary"]
    assert "a socket filter sees every packet" in one(found, "covert-trigger")["summary"]
