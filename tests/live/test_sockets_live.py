"""The sockets surface on the running kernel, in a network namespace of the test's own.

`ip netns add` makes a namespace (deleted in the fixture's finally) with a listener inside it,
held by a child process; this process listens on loopback in its own namespace. The surface
must find both, each in its namespace (by nsfs inode, and by name for the named one), each
with its owner, and the two socket views must agree on them.

Hiding for real, without a rootkit: inside the test's namespace and a private mount namespace
(unshare --mount), /proc is replaced by a tmpfs of symlinks into a fresh procfs, where
thread-self/net/tcp is a copy of the real file minus the listener's line: what a hook on
tcp4_seq_show() shows. sock_diag and the bind probe still see the socket, and the cross-view
must name it: port, protocol, namespace, owner, and proc_net as the view that hid it. That
doctored /proc serves the copied file in every namespace, so findings about the other
namespaces of that one scan are expected and not looked at. The host's /proc is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from patchguard.findings import Finding
from patchguard.kernel import Kernel
from patchguard.kernel.errors import KernelAccessError
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.sockets import (
    BIND_PROBE,
    BPF_SOCK_ITER,
    PROC_NET,
    SOCK_DIAG,
    Listener,
    NetnsViews,
    Owner,
    SocketRecords,
    SocketsSurface,
)
from patchguard.surfaces.sockets.fd_iter import FdIterator
from patchguard.surfaces.sockets.holders import HeldSocket, held_socket
from patchguard.surfaces.sockets.owners import read_owners

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
Scanned = tuple[SurfaceState[SocketRecords], list[Finding]]

LISTEN = r"""
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(120)
"""


@dataclass
class Lab:
    name: str  # the namespace's /run/netns name
    inode: int
    child: int  # the process listening inside it
    port: int
    own_port: int  # our listener, in our own namespace
    own_inode: int


def case(request: pytest.FixtureRequest, text: str) -> None:
    request.node.user_properties.append(("case", text))
    print(f"case: {text}")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if shutil.which("ip") is None:
        pytest.skip("needs ip(8) (iproute2)")
    name = f"pg-sockets-{os.getpid()}"
    ip("netns", "add", name)
    child: subprocess.Popen[str] | None = None
    own = socket.socket()
    try:
        ip("-n", name, "link", "set", "lo", "up")
        cmd = ["ip", "netns", "exec", name, sys.executable, "-c", LISTEN]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        port = int(child.stdout.readline())
        own.bind(("127.0.0.1", 0))
        own.listen()
        yield Lab(
            name,
            os.stat(f"/run/netns/{name}").st_ino,
            child.pid,  # ip netns exec execs the command: the same process
            port,
            own.getsockname()[1],
            os.stat("/proc/self/ns/net").st_ino,
        )
    finally:
        own.close()
        if child is not None:
            child.kill()  # our own child, by its pid
            child.wait()
        ip("netns", "delete", name)


@pytest.fixture(scope="module")
def scanned(lab: Lab) -> Scanned:
    surface = SocketsSurface()
    state = surface.collect(Kernel())
    return state, surface.assess(state)


def listener(state: SurfaceState[SocketRecords], netns: int, port: int) -> Listener:
    found = [
        r for r in state.records.listeners if r.netns == netns and r.local == f"127.0.0.1:{port}"
    ]
    assert len(found) == 1, found
    return found[0]


def views_of(state: SurfaceState[SocketRecords], netns: int) -> NetnsViews:
    (views,) = [r for r in state.records.namespaces if r.netns.inode == netns]
    return views


def test_listener_in_another_namespace_with_its_owner(
    lab: Lab, scanned: Scanned, request: pytest.FixtureRequest
) -> None:
    state, _ = scanned
    found = listener(state, lab.inode, lab.port)
    assert found.protocol == "tcp" and found.state == "LISTEN"
    assert [(o.pid, o.comm) for o in found.owners] == [
        (lab.child, os.path.basename(sys.executable)[:15])
    ]
    views = views_of(state, lab.inode)
    assert views.netns.names == (lab.name,) and not views.netns.own
    assert os.stat("/proc/thread-self/ns/net").st_ino == lab.own_inode  # never left ours
    assert views.proc_net == views.sock_diag == 1 and views.suspects == 0
    refused = any(g.what.startswith("BPF socket iterator") for g in state.gaps)
    assert views.bpf_sock_iter == (None if refused else 1)  # walked in that namespace
    case(request, f"listener 127.0.0.1:{lab.port} in {views.netns.label}, pid {lab.child}")


def test_listener_on_our_loopback(
    lab: Lab, scanned: Scanned, request: pytest.FixtureRequest
) -> None:
    state, _ = scanned
    found = listener(state, lab.own_inode, lab.own_port)
    assert os.getpid() in [o.pid for o in found.owners]
    views = views_of(state, lab.own_inode)
    assert views.netns.own and views.proc_net is not None and views.sock_diag is not None
    case(request, f"own listener found; {views.proc_net} sockets in our namespace; {views.probe}")


def test_clean_machine_hides_no_socket(scanned: Scanned, request: pytest.FixtureRequest) -> None:
    state, findings = scanned
    assert [f.subject for f in findings] == []
    assert not state.records.hidden
    gaps = sorted({g.reason for g in state.gaps})
    case(request, f"no hidden socket; gaps: {gaps}")


def test_probing_every_port_finds_nothing_hidden(lab: Lab, request: pytest.FixtureRequest) -> None:
    surface = SocketsSurface("all")
    state = surface.collect(Kernel())
    views = views_of(state, lab.inode)
    assert views.probed_ports == 2 * 65535 and views.ports_in_use == 1  # the listener's port
    assert surface.assess(state) == []
    case(request, f"{views.probed_ports} ports probed in {views.netns.label}: only the listener's")


HIDE_AND_SCAN = r"""
import json, os, subprocess, sys, tempfile
from patchguard.kernel import Kernel
from patchguard.surfaces.sockets import SocketsSurface
port = int(sys.argv[1])
real = tempfile.mkdtemp(prefix="pg-realproc-")
subprocess.run(["mount", "-t", "proc", "proc", real], check=True)
net = os.path.join(real, "thread-self", "net")
tcp = open(os.path.join(net, "tcp")).read()
kept = [line for line in tcp.splitlines(True) if f":{port:04X} " not in line.split()[1] + " "]
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/proc"], check=True)
for name in os.listdir(real):
    if name != "thread-self":
        os.symlink(os.path.join(real, name), os.path.join("/proc", name))
os.makedirs("/proc/thread-self/net")
os.symlink(os.path.join(real, "thread-self", "ns"), "/proc/thread-self/ns")
for name in os.listdir(net):
    if name != "tcp":
        os.symlink(os.path.join(net, name), os.path.join("/proc/thread-self/net", name))
with open("/proc/thread-self/net/tcp", "w") as f:
    f.write("".join(kept))
surface = SocketsSurface("all")
state = surface.collect(Kernel())
print(json.dumps([
    {"technique": f.technique, "severity": f.severity.label, "subject": f.subject,
     "summary": f.summary, "evidence": dict(f.evidence)}
    for f in surface.assess(state)
]))
"""


def test_socket_hidden_from_proc_net_is_named(lab: Lab, request: pytest.FixtureRequest) -> None:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(1) (util-linux)")
    enter = ["ip", "netns", "exec", lab.name, "unshare", "--mount", "--propagation", "private"]
    out = subprocess.run(
        [*enter, sys.executable, "-c", HIDE_AND_SCAN, str(lab.port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    ours = [f for f in json.loads(out.stdout) if f["evidence"]["netns"] == lab.inode]
    assert len(ours) == 1, ours
    finding, evidence = ours[0], ours[0]["evidence"]
    assert (finding["technique"], finding["severity"]) == ("hidden-socket", "high")
    assert (evidence["protocol"], evidence["port"]) == ("tcp", lab.port)
    assert evidence["netns_names"] == [lab.name] and evidence["owner_pids"] == [lab.child]
    assert evidence["seen_by"][0] == SOCK_DIAG and evidence["seen_by"][-1] == BIND_PROBE
    assert set(evidence["seen_by"]) <= {SOCK_DIAG, BPF_SOCK_ITER, BIND_PROBE}
    assert evidence["missing_from"] == [PROC_NET]
    assert f"pid {lab.child}" in finding["summary"] and lab.name in finding["subject"]
    case(request, finding["summary"])


HOLD = r"""
import socket, time
bound = socket.socket()
bound.bind(("127.0.0.1", 0))
listening = socket.socket()
listening.bind(("127.0.0.1", 0))
listening.listen()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind(("::1", 0))
for s in (bound, listening, udp):
    print(s.fileno(), s.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_a_held_socket_asked_through_pidfd_getfd(request: pytest.FixtureRequest) -> None:
    """The holder of a port only the probe finds is asked directly: a copy of its fd."""
    child = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        (b_fd, b_port), (l_fd, l_port), (u_fd, u_port) = (
            map(int, child.stdout.readline().split()) for _ in range(3)
        )
        found = [held_socket(child.pid, fd, fd) for fd in (b_fd, l_fd, u_fd)]
    finally:
        child.kill()  # our own child, by its pid
        child.wait()
    assert found == [
        HeldSocket(b_fd, "tcp", b_port, True),
        HeldSocket(l_fd, "tcp", l_port, False),
        HeldSocket(u_fd, "udp", u_port, False),
    ]
    case(request, "bound-only, listening and UDP sockets of a child told apart through its fds")


def test_task_file_iterator_gives_the_owner_map_of_proc(
    lab: Lab, request: pytest.FixtureRequest
) -> None:
    """The owners the BPF task-file iterator finds are /proc/<pid>/fd's: compared for this
    process and the namespace's listener (other processes on a shared machine open and close
    sockets between the two reads)."""
    try:
        iterator = FdIterator(Kernel().vmlinux_btf)
    except KernelAccessError as exc:
        pytest.skip(f"the kernel refuses the task-file iterator: {exc}")
    try:
        walked = read_owners(Path("/proc"), iterator.walk())
    finally:
        iterator.close()
    listed = read_owners(Path("/proc"))
    ours = {os.getpid(), lab.child}

    def pairs(owners: dict[int, list[Owner]]) -> set[tuple[int, int, int]]:
        return {(i, o.pid, o.fds) for i, os_ in owners.items() for o in os_ if o.pid in ours}

    assert pairs(walked.owners) == pairs(listed.owners)
    assert lab.child in {pid for _, pid, _ in pairs(walked.owners)}
    case(request, f"{len(walked.owners)} socket inodes: the same owners as /proc/<pid>/fd")
