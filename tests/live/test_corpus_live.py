"""The truth corpus on the running kernel: software people run on purpose, each run for real,
and what patchguard says of it. With the manifest the project ships for it approved through a
ledger, nothing of it is above info and every hook it holds is named with the exception that
allows it; every kernel code change it causes is explained with its owner; once the exception
has expired, its hooks are findings again. README's corpus table lists the members.

Members here (this kernel allows BPF with BTF, no kprobes, no modules, no fentry):
- bpftrace (Debian's 0.17.0-1) running bpftrace-sre-probes.bt: a syscall tracepoint, a uprobe
  and a uretprobe on bash's readline, a software perf event, interval and profile probes
  (raw tracepoints: this bpftrace has no such probe type); bpftrace-kprobes.bt (kprobes and a
  kretprobe) where the kernel allows kprobes and bpftrace-fentry.bt (kfunc and kretfunc: BPF
  trampolines) where it allows fentry (both in the lab: tests/lab/test_lab_corpus.py);
- a tc BPF classifier that tc attaches in a network namespace the test creates and deletes;
- nftables rules in a network namespace of the test's own;
- `perf record` and `perf trace` (Debian's linux-perf): perf events, no BPF, nothing to
  sanction: it needs no manifest, and nothing of it may be above info.
Objects of other processes on the machine are left out by what marks the member's own (the
tracer's pid, its programs, the test's namespace)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.corpus import (
    MANIFESTS,
    Doc,
    about,
    acting,
    allowed_and_named,
    approved_and_expired,
    baseline_env,
    but_lapsed,
    changes_explained,
    cli,
    interrupt,
    lapsed_named,
    lapsed_of,
    loader_release,
    netns,
    programs_held_by,
    run,
    tool,
)

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return baseline_env(tmp_path)


PROBES = 6  # programs bpftrace-sre-probes.bt loads
TC_NETNS, NFT_NETNS = "pg-corpus-tc", "pg-corpus-nft"


def prog_fds(pid: int, key: str = "prog_id:") -> int:
    """How many BPF programs (`key` "link_id:": links) process `pid` holds an fd of."""
    count = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            count += key in fd.read_text()
    return count


@contextlib.contextmanager
def tracing(
    program: Path, probes: int = PROBES, refused: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    """bpftrace running `program` until its `probes` programs are attached; stopped with SIGINT
    (it detaches and prints its maps) on the way out. `refused`: why a bpftrace that exits
    before then is a skip (the kernel has no such probes), not a failure."""
    with running([tool("bpftrace"), str(program)], "Attaching", probes, refused) as tracer:
        time.sleep(1)  # "Attaching" is said before the attach: give it its moment
        yield tracer


@contextlib.contextmanager
def running(
    argv: list[str], ready: str, probes: int, refused: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A tracer running `argv` until it has said `ready` and holds `probes` programs (`ready`
    "": until it holds `probes` links, for one whose output waits in a pipe's buffer); stopped
    as its user stops it on the way out. `refused`: why one that exits before then is a skip."""
    tracer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said: list[str] = []  # read all along: a tracer must never block on a full pipe
    threading.Thread(target=lambda: said.extend(tracer.stdout or ()), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        held = "link_id:" if not ready else "prog_id:"
        while not _said(ready, said) or prog_fds(tracer.pid, held) < probes:
            if tracer.poll() is not None and refused is not None:
                pytest.skip(f"{refused}: {argv[0]} said {' '.join(said)[-300:]}")
            assert tracer.poll() is None and time.monotonic() < deadline, f"{argv}: {said}"
            time.sleep(0.2)
        yield tracer
    finally:
        interrupt(tracer)


@dataclass(frozen=True)
class Tracer:
    """A bpftrace corpus member: its script, its manifest, what it loads and what comes back
    as findings once its exception has expired."""

    script: str
    manifest: str
    programs: tuple[str, ...]
    back: frozenset[str]
    refused: str | None = None  # why the kernel may refuse it (then a skip)
    markers: tuple[str, ...] = ()  # what names its hooks in findings beside its pid
    direct_on: str | None = None  # the function its BPF trampoline is called on (fentry)


SRE_PROBES = Tracer(
    "bpftrace-sre-probes.bt",
    "bpftrace-sre-probes.toml",
    ("sys_enter_kill", "readline", "readline", "100", "1", "49"),
    frozenset({"uprobe-credential-theft", "sensitive-hook"}),
)
KPROBES = Tracer(
    "bpftrace-kprobes.bt",
    "bpftrace-kprobes.toml",
    ("do_sys_openat2", "do_sys_openat2", "vfs_read"),
    frozenset({"sensitive-hook", "kprobe-sensitive-function"}),
    refused="this kernel does not let bpftrace attach kprobes (the lab runs this member)",
    markers=("do_sys_openat2+0x0", "vfs_read+0x0"),
)


FENTRY = Tracer(
    "bpftrace-fentry.bt",
    "bpftrace-fentry.toml",
    ("vfs_read", "vfs_read"),
    frozenset({"sensitive-hook", "ftrace-hook-sensitive-function"}),
    refused="this kernel refuses fentry programs (the lab runs this member)",
    markers=("vfs_read",),
    direct_on="vfs_read",
)


@pytest.mark.parametrize(
    "member", [SRE_PROBES, KPROBES, FENTRY], ids=["sre-probes", "kprobes", "fentry"]
)
def test_bpftrace_is_quiet_and_named_then_findings_once_expired(
    env: dict[str, str], tmp_path: Path, member: Tracer
) -> None:
    manifest = MANIFESTS / member.manifest
    loader_release(manifest)  # a stale pin fails here, naming the release and hash to add
    vendor = "Debian (bpftrace packaging)"
    approved, expired = approved_and_expired(tmp_path, manifest, "bpftrace packagers")
    script = MANIFESTS / member.script
    with tracing(script, len(member.programs), member.refused) as tracer:
        allowed = cli(env, "scan", "--records", ledger_path=approved)
        check = cli(env, "check", ledger_path=approved)
        lapsed = cli(env, "scan", "--records", ledger_path=expired)
        pid = tracer.pid
    ids = set(programs_held_by(allowed, pid))
    assert sorted(programs_held_by(allowed, pid).values()) == sorted(member.programs)
    marker = (f"pid {pid} ", *member.markers)
    loud = acting(about(allowed, ids, marker))
    assert loud == [], [(f["subject"], f["summary"]) for f in loud]
    allowed_and_named(about(allowed, ids), ids, vendor)
    hooks = [f for f in about(allowed, set(), member.markers) if f["surface"] == "tracing"]
    assert all(f["disposition"] == "allowed" for f in hooks), hooks
    changes_explained(check, marker)
    if member.direct_on is not None:
        named_by_programs(allowed, check, member.direct_on, ids)
    back = acting(about(lapsed, set(programs_held_by(lapsed, pid)), marker))
    assert {f["technique"] for f in back} >= member.back, back
    assert not [f for f in about(lapsed, ids, marker) if f["disposition"] == "allowed"]
    lapsed_named(lapsed, ids, vendor)


def _said(ready: str, said: list[str]) -> bool:
    return not ready or any(ready in line for line in said)


RUNQLAT = ("sched_switch", "sched_wakeup", "sched_wakeup_new")  # its raw tracepoints
# The surfaces that can speak of a raw tracepoint program: its program and its tracepoints'
# probes. What scan says with no exception and past the expiry is compared on these alone: the
# lab boot runs every scan under emulation.
RAW_TP_SCAN = ("scan", "--records", "--surface", "ebpf", "--surface", "tracing")


def test_runqlat_raw_tracepoints_are_quiet_and_named_then_back_to_unsanctioned_once_expired(
    env: dict[str, str], tmp_path: Path
) -> None:
    """libbpf-tools' runqlat: BTF raw tracepoint programs (tp_btf) through raw tracepoint
    links. Approved, each program is shown allowed by the exception, with its id, and each code
    change on its tracepoints names the tracepoint and the program; past the expiry nothing of
    it is allowed, scan says of it what it says with no exception at all, and one more finding
    per program, exception-lapsed (low), names the exception that ended while it runs."""
    manifest = MANIFESTS / "runqlat.toml"
    loader_release(manifest)
    approved, expired = approved_and_expired(tmp_path, manifest, "libbpf-tools packagers")
    # Its "Tracing run queue latency..." waits in the pipe's buffer: its links say it attached
    with running([tool("runqlat")], "", len(RUNQLAT), "no BTF raw tracepoints") as tracer:
        bare = cli(env, *RAW_TP_SCAN)
        allowed = cli(env, "scan", "--records", ledger_path=approved)
        check = cli(env, "check", ledger_path=approved)
        lapsed = cli(env, *RAW_TP_SCAN, ledger_path=expired)
        pid = tracer.pid
    held = programs_held_by(allowed, pid)
    assert sorted(held.values()) == sorted(RUNQLAT), held
    ids, marker = set(held), (f"pid {pid} ",)
    loud = acting(about(allowed, ids, marker))
    assert loud == [], [(f["subject"], f["summary"]) for f in loud]
    allowed_and_named(about(allowed, ids), ids, "Debian (libbpf-tools packaging)")
    owners = [f["evidence"]["owner"] for f in changes_explained(check, marker)]
    for prog_id, name in held.items():
        named = f"tracepoint {name}: BPF prog {prog_id} {name} (raw_tracepoint:{name} via link "
        assert any(o.startswith(named) for o in owners), (named, owners)
    back = about(lapsed, set(programs_held_by(lapsed, pid)), marker)
    assert not [f for f in back if f["disposition"] == "allowed"], back
    assert set(programs_held_by(lapsed, pid)) == ids
    lapsed_named(lapsed, ids, "Debian (libbpf-tools packaging)")
    unsanctioned = about(bare, set(programs_held_by(bare, pid)), marker)
    assert lapsed_of(bare) == [] and lapsed_of(allowed) == []  # none without a lapsed exception
    besides = {f["technique"] for f in acting(but_lapsed(back))}
    assert besides == {f["technique"] for f in acting(unsanctioned)}


def named_by_programs(allowed: Doc, check: Doc, function: str, ids: set[int]) -> None:
    """The ftrace hook of a direct call is allowed as what the call reaches, read from memory:
    a BPF trampoline running exactly the tracer's programs; check names that trampoline and
    those programs as the site's owner, never ftrace's direct-call ops (call_direct_funcs)."""
    hooks = [
        f
        for f in allowed["findings"]
        if f["surface"] == "tracing" and f["evidence"].get("function") == function
    ]
    assert hooks, f"no ftrace hook on {function} in {allowed['findings']}"
    for f in hooks:
        ev = f["evidence"]
        assert ev.get("direct_known") is True and set(ev["direct_prog_ids"]) == ids, ev
        assert str(ev["direct_trampoline"]).startswith("bpf_trampoline_"), ev
    owners = [str(f["evidence"]["owner"]) for f in changes_explained(check, (function,))]
    direct = [o for o in owners if o.startswith("BPF trampoline ")]
    assert direct and all(f"prog {i} " in o for o in direct for i in ids), owners
    assert not [o for o in owners if "call_direct_funcs" in o], owners


def test_tc_classifier_is_quiet_and_named_then_findings_once_expired(
    env: dict[str, str], tmp_path: Path
) -> None:
    manifest = MANIFESTS / "tc-pass-counter.toml"
    obj = tmp_path / "tc-pass-counter.bpf.o"
    source = MANIFESTS / "tc-pass-counter.bpf.c"
    include = "-I/usr/include/x86_64-linux-gnu"  # asm/types.h of Debian's multiarch layout
    run(tool("clang"), "-O2", "-g", "-target", "bpf", include, "-c", str(source), "-o", str(obj))
    approved, expired = approved_and_expired(tmp_path, manifest, "netops")
    with netns(TC_NETNS):
        run(tool("tc"), "-n", TC_NETNS, "qdisc", "add", "dev", "pgc0", "clsact")
        attach = ("filter", "add", "dev", "pgc0", "ingress", "bpf", "da", "obj", str(obj))
        run("tc", "-n", TC_NETNS, *attach, "sec", "classifier")
        allowed = cli(env, "scan", "--records", "--surface", "ebpf", ledger_path=approved)
        lapsed = cli(env, "scan", "--records", "--surface", "ebpf", ledger_path=expired)
    marker = (f"in netns {TC_NETNS} ",)
    mine = about(allowed, set(), marker)
    ids = {f["evidence"]["prog_id"] for f in mine if "prog_id" in f["evidence"]}
    assert len(ids) == 1, mine
    assert acting(mine) == []
    allowed_and_named(about(allowed, ids), ids, "Debian (iproute2 packaging)")
    back = acting(about(lapsed, ids, marker))
    assert {f["technique"] for f in but_lapsed(back)} == {"covert-trigger", "orphan-program"}, back
    lapsed_named(lapsed, ids, "Debian (iproute2 packaging)")


NFT_RULES = """
table inet corpus_fw {
  chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }
  chain output { type filter hook output priority 0; policy accept; }
}
"""


def test_nftables_rules_are_quiet_and_named(env: dict[str, str]) -> None:
    with netns(NFT_NETNS):
        loaded = subprocess.run(
            ["ip", "netns", "exec", NFT_NETNS, tool("nft"), "-f", "-"],
            input=NFT_RULES,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert loaded.returncode == 0, loaded.stderr
        inode = os.stat(f"/run/netns/{NFT_NETNS}").st_ino
        doc = cli(env, "scan", "--records", "--surface", "netfilter")
    records = [r for s in doc["surfaces"] for r in s["records"]]
    (views,) = [r for r in records if r["kind"] == "NetfilterViews"]
    if not views["hook_lists_read"]:
        pytest.skip(
            "this kernel's netfilter hook lists are unreadable here (no nfnetlink hook dump, "
            f"no kernel memory view): {views['dump_unavailable']}"
        )
    # The hook dump names the table (in this process's namespace only); the memory view
    # names the namespace of each hook, not its table
    ours = [
        r
        for r in records
        if r["kind"] == "NetfilterHook"
        and r["hook_type"] == "nftables"
        and (r.get("table") == "corpus_fw" or r.get("netns") == inode)
    ]
    assert {r["hook"] for r in ours} >= {"input", "output"}, (inode, records[:40])
    assert all(r["function"] and r["function"].startswith("nft_do_chain") for r in ours), ours
    # findings do not say the namespace: no nftables hook anywhere may be above info
    loud = [f for f in acting(doc["findings"]) if "nft_do_chain" in str(f["evidence"])]
    assert loud == [], loud


@contextlib.contextmanager
def perf(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    session = subprocess.Popen(
        [tool("perf"), *argv, "--", "sleep", "120"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(2)  # perf opens its events before it runs the workload
        if session.poll() is not None:
            said = (session.stderr.read() if session.stderr else b"").decode(errors="replace")
            pytest.skip(f"perf {argv[0]} cannot run on this kernel: {said[-400:]}")
        yield session
    finally:
        interrupt(session)


@pytest.mark.parametrize(
    "argv",
    [("record", "-e", "cpu-clock", "-a", "-o"), ("trace", "-o")],
    ids=["perf-record", "perf-trace"],
)
def test_perf_sessions_need_no_exception(
    env: dict[str, str], tmp_path: Path, argv: tuple[str, ...]
) -> None:
    """perf opens perf events (and perf trace enables the syscall tracepoints) with no BPF:
    nothing of it is above info without any exception, and each code change it causes, a
    tracepoint turned on, is explained with perf's probe as its owner."""
    with perf(*argv, str(tmp_path / "perf.out")) as session:
        scan = cli(env, "scan", "--records")
        check = cli(env, "check")
        marker = (f"pid {session.pid} ", "perf_trace_sys", "perf_syscall")
    assert acting(about(scan, set(), marker)) == []
    changes_explained(check, marker)
    if argv[0] == "trace":
        # The syscall tracepoint's key, if this run turned it on (it may have been on at the
        # baseline already), names perf's probe among its owners.
        entry = [f for f in check["findings"] if f["subject"].startswith("syscall_trace_enter")]
        for f in entry:
            assert re.search(r"perf_(trace_sys|syscall)_enter", f["evidence"]["owner"]), f
