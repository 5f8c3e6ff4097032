"""The netfilter surface on the running kernel: a real BPF netfilter program hooked into this
network namespace's ipv4 output list, found with its program, hook, priority and owner, and
gone after detach; and the nfnetlink hook dump, which works (the lab's Debian 6.1 kernel, with
nfnetlink_hook) or is a gap that names what the kernel answered (these VMs' 6.18, built without
CONFIG_NETFILTER_NETLINK_HOOK: EINVAL). Each test records which case ran.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import bpfprogs as bp

from patchguard.findings import Finding, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.bpf.syscall import BpfError
from patchguard.kernel.nfnetlink_hook import HookDumpError, HookSocket
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.netfilter import (
    BpfNetfilterHook,
    NetfilterHook,
    NetfilterSurface,
    config_option,
    dump_failure,
)
from patchguard.surfaces.netfilter.paths import NOT_BUILT

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]

NFPROTO_IPV4, NF_INET_LOCAL_OUT = 2, 3
PRIORITY = 4242  # unusual, so the hook is ours
HOOK_LISTS = "netfilter hook lists (nfnetlink hook dump)"
MEMORY = "netfilter hook lists (kernel memory)"


def case(request: pytest.FixtureRequest, text: str) -> None:
    request.node.user_properties.append(("case", text))
    print(f"case: {text}")


def scan() -> tuple[SurfaceState, list[Finding]]:
    surface = NetfilterSurface()
    state = surface.collect(Kernel())
    return state, surface.assess(state)


def bpf_hooks(state: SurfaceState) -> dict[int, BpfNetfilterHook]:
    return {h.prog_id: h for h in state.records.links}


def kernel_release() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor)


@contextlib.contextmanager
def attached(
    request: pytest.FixtureRequest, priority: int = PRIORITY
) -> Iterator[bp.Loaded | None]:
    """A netfilter program at ipv4 output, detached on the way out; None where the kernel has
    no such program type (it arrived in 6.4)."""
    try:
        prog = bp.attach_netfilter(NFPROTO_IPV4, NF_INET_LOCAL_OUT, priority, "pg_t_nf")
    except BpfError as exc:
        case(request, f"BPF netfilter programs refused by this kernel: {exc}")
        assert exc.errno == errno.EINVAL and kernel_release() < (6, 4), exc
        yield None
        return
    with prog:
        yield prog


@pytest.fixture
def hooked(request: pytest.FixtureRequest) -> Iterator[bp.Loaded]:
    with attached(request) as prog:
        if prog is None:
            pytest.skip("BPF_PROG_TYPE_NETFILTER arrived in 6.4")
        yield prog


def loopback_udp_flows() -> bool:
    """A datagram to ourselves crosses ipv4 output: NF_ACCEPT lets it through."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        tx.sendto(b"pg", rx.getsockname())
        return rx.recv(16) == b"pg"


def test_bpf_netfilter_link_is_listed_with_hook_priority_and_owner(
    hooked: bp.Loaded, request: pytest.FixtureRequest
) -> None:
    case(request, "BPF netfilter link at ipv4 output")
    assert loopback_udp_flows()
    state, findings = scan()
    record = bpf_hooks(state)[hooked.prog_id]
    assert (record.prog_name, record.family, record.hook) == ("pg_t_nf", "ipv4", "output")
    assert (record.hooknum, record.priority, record.defrag) == (NF_INET_LOCAL_OUT, PRIORITY, False)
    assert {o.pid for o in record.owners} == {os.getpid()}
    assert record.owners[0].exe == os.path.realpath(sys.executable)
    assert state.counts["bpf_links"] >= 1
    mine = [f for f in findings if f.evidence.get("prog_id") == hooked.prog_id]
    assert [(f.technique, f.severity) for f in mine] == [("netfilter-bpf-hook", Severity.INFO)]
    assert f"pid {os.getpid()}" in mine[0].summary

    hooked.close()
    assert bp.wait_gone(hooked.prog_id)
    assert hooked.prog_id not in bpf_hooks(scan()[0])


def test_pinned_link_is_kept_by_its_pin(request: pytest.FixtureRequest) -> None:
    try:
        prog = bp.attach_netfilter(NFPROTO_IPV4, NF_INET_LOCAL_OUT, PRIORITY, "pg_t_nfpin", True)
    except BpfError as exc:
        case(request, f"BPF netfilter programs refused by this kernel: {exc}")
        assert exc.errno == errno.EINVAL and kernel_release() < (6, 4), exc
        return
    with prog:
        case(request, "BPF netfilter link kept only by a pin")
        state, findings = scan()
        record = bpf_hooks(state)[prog.prog_id]
        assert record.owners == () and record.pins == (prog.pin,)
        mine = [f.technique for f in findings if f.evidence.get("prog_id") == prog.prog_id]
        assert mine == ["netfilter-bpf-hook"]
    assert bp.wait_gone(prog.prog_id)


def probe_dump() -> HookDumpError | None:
    """Ask the kernel for the ipv4 prerouting list directly, as the surface's first dump does."""
    try:
        with HookSocket() as sock:
            sock.dump(NFPROTO_IPV4, 0)
    except HookDumpError as exc:
        return exc
    return None


def kernel_config(option: str) -> str | None:
    """The option in /proc/config.gz, else in /boot/config-<release> (Debian's kernels)."""
    config = Path("/proc/config.gz")
    if config.exists():
        return config_option(gzip.decompress(config.read_bytes()).decode(), option)
    boot = Path(f"/boot/config-{os.uname().release}")
    return config_option(boot.read_text(), option) if boot.exists() else None


def test_hook_dump_works_or_is_a_gap_with_the_kernels_answer(
    request: pytest.FixtureRequest,
) -> None:
    refused = probe_dump()
    with attached(request) as prog:
        state, findings = scan()
    views = state.records.views
    assert views is not None
    hooks = state.records.hooks
    gaps = {g.what: g.reason for g in state.gaps}
    if refused is not None:
        built = kernel_config("CONFIG_NETFILTER_NETLINK_HOOK")
        if built == "not set":  # nfnetlink_rcv_msg(): no such subsystem; the scan does not ask
            assert refused.errno == errno.EINVAL
            assert views.dump_unavailable == NOT_BUILT
        else:
            assert views.dump_unavailable == dump_failure(refused, built)
            assert f"({errno.errorcode[refused.errno]})" in views.dump_unavailable
        if views.hook_lists_from == "kernel memory":  # data symbols: net->nf read directly
            case(request, f"dump refused ({refused}); {len(hooks)} hooks read from memory")
            assert views.hook_lists_read and HOOK_LISTS not in gaps
            assert_clean(hooks, findings)
            return
        case(request, f"nfnetlink hook dump refused: {refused}; memory view: {gaps[MEMORY]}")
        assert gaps[HOOK_LISTS] == views.dump_unavailable
        assert not views.hook_lists_read and not hooks
        if prog is not None:
            assert bpf_hooks(state)[prog.prog_id].in_hook_lists is None
        return
    case(request, f"nfnetlink hook dump works: {len(hooks)} hooks")
    assert views.hook_lists_read
    assert not [g for g in state.gaps if g.what.startswith("netfilter ")], state.gaps
    if prog is not None:  # 6.4+: the dump names the program behind nf_hook_run_bpf
        mine = [h for h in hooks if h.hook_type == "bpf" and h.prog_id == prog.prog_id]
        assert [(h.family, h.hook, h.priority) for h in mine] == [("ipv4", "output", PRIORITY)]
        assert bpf_hooks(state)[prog.prog_id].in_hook_lists is True
    assert_clean(hooks, findings)


def assert_clean(hooks: list[NetfilterHook], findings: list[Finding]) -> None:
    """A clean kernel: valid hook names, every hook's code has a symbol, every module listed."""
    names = ("prerouting", "input", "forward", "output", "postrouting", "ingress", "egress")
    assert all(h.hook in names for h in hooks), hooks
    assert not [f for f in findings if f.technique == "hidden-netfilter-hook"], findings
