"""The processes surface without the live kernel: its parsers, the cross-view logic on pid
sets (the re-checks are fed scripted looks, each a set of pids per view, as the live looks
return them), collect() on a /proc tree built in tmp_path, the iterator program's encoding and
the BTF member offsets it is built from (vmlinux BTF captured from the 6.18 "fc" kernel,
whose offsets the live iterator test proves by reading real pids with them)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from patchguard.findings import Disposition, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.bpf.insn import BPF_EXIT, BPF_JMP, decode
from patchguard.kernel.bpf.iterators import (
    RECORD,
    BPF_FUNC_probe_read_kernel,
    BPF_FUNC_seq_write,
    IterTask,
    TaskOffsets,
    parse_records,
    task_iter_program,
)
from patchguard.kernel.btf import Btf
from patchguard.surfaces.base import Status
from patchguard.surfaces.processes import (
    BPF_ITER,
    ITER_WHAT,
    KILL,
    LISTING,
    MEMORY_WHAT,
    NOT_LIVE_BPF,
    NOT_LIVE_MEMORY,
    NOT_LIVE_PROBE,
    PID_TABLE_WHAT,
    PROBE_WHAT,
    STAT,
    TASKS,
    HiddenPid,
    ProcessesSurface,
    ProcessRecords,
    ProcessViews,
    assess_records,
    disagreements,
    fold_threads,
    in_child_pid_namespace,
    parse_pid_max,
    parse_tgid,
    pids_in_listing,
    settle,
    status_field,
)

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"

# /proc/<pid>/status of a thread (tid 59 of process 1) and of a task in a child pid namespace,
# in proc_pid_status()'s format as the 6.18 machine prints it (head only).
THREAD_STATUS = "Name:\tprocess_api\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\n"
THREAD_STATUS += "Pid:\t59\nPPid:\t0\nTracerPid:\t0\nNStgid:\t1\nNSpid:\t59\n"
CHILD_NS_STATUS = "Name:\tsh\nTgid:\t4242\nPid:\t4242\nNStgid:\t4242\t1\nNSpid:\t4242\t1\n"


# --- parsers ------------------------------------------------------------------------------------


def test_pid_max() -> None:
    assert parse_pid_max("32768\n") == 32768
    assert parse_pid_max("4194304") == 4194304
    for junk in ("", "abc", "-1", "1"):
        with pytest.raises(ValueError):
            parse_pid_max(junk)


def test_listing_keeps_pid_entries_only() -> None:
    names = ["1", "2", "self", "thread-self", "sys", "4194303", "acpi", "01", "12a"]
    assert pids_in_listing(names) == {1, 2, 4194303}


def test_status_fields() -> None:
    assert status_field(THREAD_STATUS, "Name") == "process_api"
    assert status_field(THREAD_STATUS, "Pid") == "59"  # not PPid, not TracerPid
    assert parse_tgid(THREAD_STATUS) == 1
    assert parse_tgid("Name:\tx\n") is None
    assert not in_child_pid_namespace(THREAD_STATUS)
    assert in_child_pid_namespace(CHILD_NS_STATUS)
    assert not in_child_pid_namespace("Name:\told kernel without NSpid\n")


# --- cross-view ---------------------------------------------------------------------------------


def test_thread_is_listed_by_its_task_directory() -> None:
    # 59 is a thread of 1: /proc lists 1 only, /proc/1/task lists both, kill answers both.
    views = {LISTING: {1}, TASKS: {1, 59}, KILL: {1, 59}, BPF_ITER: {1, 59}}
    assert disagreements(views) == {}


def test_hidden_pid_and_its_views() -> None:
    views = {LISTING: {1}, TASKS: {1}, KILL: {1, 666}, BPF_ITER: {1, 666}}
    assert disagreements(views) == {666: ((KILL, BPF_ITER), (LISTING, TASKS))}


def test_listed_pid_missing_from_a_probe() -> None:
    views = {LISTING: {1, 7}, TASKS: {1, 7, 8}, KILL: {1, 7, 8}, BPF_ITER: {1}}
    assert disagreements(views) == {
        7: ((LISTING, TASKS, KILL), (BPF_ITER,)),
        8: ((TASKS, KILL), (BPF_ITER,)),  # a thread: missing from LISTING is not held against it
    }


def test_settle_drops_races_and_keeps_what_every_look_sees() -> None:
    first = {LISTING: {1}, TASKS: {1}, KILL: {1, 500, 501, 666}}
    looks = iter(
        [
            # 500 was born after the listing and is listed now; 501 has exited; 666 stays hidden
            {LISTING: {500}, TASKS: {500}, KILL: {500, 666}, STAT: {500, 666}},
            {LISTING: {500}, TASKS: {500}, KILL: {500, 666}, STAT: {500, 666}},
        ]
    )
    asked: list[set[int]] = []

    def look(suspects: set[int]) -> dict[str, set[int]]:
        asked.append(suspects)
        return next(looks)

    confirmed, rechecks = settle(first, look)
    assert confirmed == {666: ((KILL, STAT), (LISTING, TASKS))}
    assert rechecks == 2
    assert asked == [{500, 501, 666}, {666}]


def test_settle_needs_every_look_to_disagree() -> None:
    first = {LISTING: {1}, TASKS: {1}, KILL: {1, 666}}
    looks = iter([{LISTING: set(), TASKS: set(), KILL: {666}}, {LISTING: {666}, KILL: {666}}])
    confirmed, rechecks = settle(first, lambda _: next(looks))
    assert confirmed == {} and rechecks == 2


def test_settle_takes_no_second_look_when_all_agree() -> None:
    def look(_: set[int]) -> dict[str, set[int]]:
        raise AssertionError("no suspect, no second look")

    assert settle({LISTING: {1}, TASKS: {1}, KILL: {1}}, look) == ({}, 0)


def test_threads_of_a_hidden_process_fold_into_it() -> None:
    tgid_of = {666: 666, 667: 666, 668: 666, 900: 42}
    assert fold_threads([666, 667, 668, 900], tgid_of) == {666: [667, 668], 900: []}
    # the process itself is not a suspect: its odd thread stands alone
    assert fold_threads([667], tgid_of) == {667: []}


# --- assess -------------------------------------------------------------------------------------


def test_hidden_process_finding() -> None:
    hidden = HiddenPid(
        666, 666, (KILL, STAT, BPF_ITER), (LISTING, TASKS), "rkit", "/tmp/.x/rkit", (667,)
    )
    (finding,) = assess_records(
        ProcessRecords(ProcessViews(32768, 80, 95, 32767, 96, 96, 1, 2), (hidden,))
    )
    assert finding.technique == "hidden-process"
    assert finding.severity is Severity.HIGH and finding.disposition is Disposition.TAMPERING
    assert finding.attack_id == "T1014" and finding.subject == "pid 666 (rkit)"
    assert finding.evidence == {
        "pid": 666,
        "tgid": 666,
        "seen_by": [KILL, STAT, BPF_ITER],
        "missing_from": [LISTING, TASKS],
        "comm": "rkit",
        "exe": "/tmp/.x/rkit",
        "threads": [667],
        "task_struct": None,
    }
    assert "missing from the /proc listing and the /proc/<pid>/task listings" in finding.summary


def test_view_mismatch_finding() -> None:
    listed = HiddenPid(1, 1, (LISTING, TASKS, KILL, STAT), (BPF_ITER,), "init")
    (finding,) = assess_records(ProcessRecords(hidden=(listed,)))
    assert finding.technique == "process-view-mismatch"
    assert finding.severity is Severity.MEDIUM and finding.disposition is Disposition.SUSPICIOUS
    assert finding.evidence["missing_from"] == [BPF_ITER]


def test_nothing_to_assess() -> None:
    assert assess_records(ProcessRecords(ProcessViews(32768, 80, 95, 32767, 95, 95, 0, 0))) == []


# --- collect on a captured tree -----------------------------------------------------------------


def make_tree(root: Path) -> None:
    """A /proc with process 1 (threads 1 and 59) and process 300, and pid_max."""
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/pid_max").write_text("32768\n")
    for pid, tids in ((1, (1, 59)), (300, (300,))):
        for tid in tids:
            (root / f"proc/{pid}/task/{tid}").mkdir(parents=True)
        (root / f"proc/{pid}/status").write_text(f"Name:\tp{pid}\nTgid:\t{pid}\nPid:\t{pid}\n")
    (root / "proc/self").symlink_to("300")


def test_collect_on_captured_tree(tmp_path: Path) -> None:
    make_tree(tmp_path)
    surface = ProcessesSurface()
    state = surface.collect(Kernel(tmp_path))
    assert state.records == ProcessRecords(ProcessViews(32768, 2, 3, 0, 0, None, 0, 0))
    assert state.counts == {
        "processes": 2,
        "threads": 3,
        "pids_probed": 0,
        "tasks_iterated": 0,
        "tasks_in_memory": 0,
        "pids_in_pid_table": 0,
        "strays": 0,
        "hidden": 0,
        "iterator_skipped": 0,
        "mismatched": 0,
    }
    assert [(g.what, g.reason) for g in state.gaps] == [
        (PROBE_WHAT, NOT_LIVE_PROBE),
        (ITER_WHAT, NOT_LIVE_BPF),
        (MEMORY_WHAT, NOT_LIVE_MEMORY),
        (PID_TABLE_WHAT, NOT_LIVE_MEMORY),
    ]
    assert state.status is Status.PARTIAL
    assert surface.assess(state) == []


def test_collect_with_odd_pid_max(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "proc/sys/kernel/pid_max").write_text("lots\n")
    state = ProcessesSurface().collect(Kernel(tmp_path))
    views = state.records.views
    assert views is not None
    assert isinstance(views, ProcessViews) and views.pid_max is None and views.listed == 2
    assert "unexpected content" in state.gaps[0].reason


def test_collect_without_proc(tmp_path: Path) -> None:
    state = ProcessesSurface().collect(Kernel(tmp_path))
    assert not state.records and state.status is Status.UNAVAILABLE
    assert [g.what for g in state.gaps] == [
        "pid_max (/proc/sys/kernel/pid_max)",
        "process listing (/proc)",
    ]


# --- the iterator program and its BTF offsets ---------------------------------------------------


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return Btf.parse(gzip.decompress(VMLINUX.read_bytes()))


def test_task_struct_offsets_from_btf(vmlinux: Btf) -> None:
    assert TaskOffsets.from_btf(vmlinux) == TaskOffsets(pid=1264, tgid=1268, comm=1752)


def test_member_offsets_through_anonymous_members(vmlinux: Btf) -> None:
    # struct page { unsigned long flags; union { struct { struct list_head lru;
    # struct address_space *mapping; ... }; ... }; ... }: both inside anonymous members.
    assert vmlinux.member_offset("page", "flags") == 0
    assert vmlinux.member_offset("page", "lru") == 8
    assert vmlinux.member_offset("page", "mapping") == 24
    assert vmlinux.member_offset("task_struct", "in_execve") is None  # a bitfield
    assert vmlinux.member_offset("task_struct", "no_such_member") is None
    assert vmlinux.member_offset("no_such_struct", "pid") is None


@pytest.mark.parametrize("probe_read", [False, True])
def test_iterator_program_shape(probe_read: bool) -> None:
    insns = decode(task_iter_program(TaskOffsets(1264, 1268, 1752), probe_read))
    calls = [imm for code, _, _, _, imm in insns if code == BPF_JMP | 0x80]
    expected = [BPF_FUNC_probe_read_kernel] * 3 if probe_read else []
    assert calls == [*expected, BPF_FUNC_seq_write]
    # The NULL-task branch (third insn) lands on "r0 = 0; exit", past the seq_write call.
    code, dst, _, off, imm = insns[2]
    assert (code, dst, imm) == (BPF_JMP | 0x10, 7, 0)
    assert 3 + off == len(insns) - 2
    assert insns[-1][0] == BPF_JMP | BPF_EXIT
    assert (RECORD.size, insns[-4][4]) == (24, RECORD.size)  # r3 = the record's length


def test_iterator_records() -> None:
    data = struct.pack("<II16s", 1, 1, b"init") + struct.pack("<II16s", 59, 1, b"worker\0junk")
    assert parse_records(data + b"\1\2") == [
        IterTask(1, 1, "init"),
        IterTask(59, 1, "worker"),
    ]
