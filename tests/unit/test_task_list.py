"""The task list read from kernel memory, on a capture of the 6.18 "fc" kernel (every read the
walk made, the tasks it found and the other process views at the same moment; captured with
tests/support/capture_tasks.py): the walk replayed over those bytes finds the same tasks, a
broken list (a cycle, a pointer out of kernel space, too many tasks) is refused, and the
captured views judged against memory give the findings they should. On that machine the BPF
task iterator skips thread group 1 (the fc kernel's task_iter_hides()), which is what the
capture shows and what the assessment must call the kernel's walk, not hiding."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.memory_image import Image

from patchguard.findings import Disposition, Severity
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import MemoryReadError
from patchguard.kernel.pid_table import layout as pid_layout
from patchguard.kernel.pid_table import pid_table, pids_in_table
from patchguard.kernel.tasks import (
    MAX_TASKS,
    MemTask,
    _Walk,
    layout,
    read_spans,
    tasks_in_place,
    walk_tasks,
    walk_with_strays,
)
from patchguard.surfaces.processes import (
    BPF_ITER,
    ITER_MAP,
    KILL,
    LISTING,
    MEMORY,
    PID_TABLE,
    STAT,
    TASKS,
    HiddenPid,
    assess_hidden,
    disagreements,
)

FIXTURES = Path(__file__).parent.parent / "fixtures/6.18-fc"
VMLINUX = FIXTURES / "sys/kernel/btf/vmlinux.gz"
CAPTURE = FIXTURES / "tasks.json.gz"


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return Btf.parse(gzip.decompress(VMLINUX.read_bytes()))


@pytest.fixture(scope="module")
def capture() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(gzip.decompress(CAPTURE.read_bytes()))
    return doc


def image(capture: dict[str, Any]) -> Image:
    memory = Image()
    for address, data in capture["reads"].items():
        memory.put(int(address, 16), bytes.fromhex(data))
    return memory


def captured_tasks(capture: dict[str, Any]) -> list[MemTask]:
    return [MemTask(pid, tgid, comm, address) for pid, tgid, comm, address in capture["tasks"]]


def test_walk_replays_the_capture(vmlinux: Btf, capture: dict[str, Any]) -> None:
    tasks = walk_tasks(image(capture), capture["start"], vmlinux)
    assert tasks == captured_tasks(capture)


def test_captured_list_is_whole(capture: dict[str, Any]) -> None:
    """init_task once, every thread's group leader on the list, and the /proc task listings
    of that moment hold exactly memory's tasks."""
    tasks = captured_tasks(capture)
    assert [t.comm for t in tasks if t.pid == 0] == ["swapper/0"]
    pids = {t.pid for t in tasks}
    assert len(pids) == len(tasks)
    assert {t.tgid for t in tasks} <= pids
    assert set(capture["views"][TASKS]) == pids - {0}
    assert next(t for t in tasks if t.pid == 1).comm == "process_api"


def word_at(memory: Image, address: int) -> tuple[int, int]:
    """(block, offset) of the captured bytes that hold the word at `address`."""
    for start, data in memory.blocks.items():
        if start <= address and address + 8 <= start + len(data):
            return start, address - start
    raise AssertionError(f"{address:#x} was not read by the walk")


def put_word(memory: Image, address: int, value: int) -> None:
    start, at = word_at(memory, address)
    data = bytearray(memory.blocks[start])
    data[at : at + 8] = struct.pack("<Q", value)
    memory.blocks[start] = bytes(data)


def test_a_cycle_that_misses_its_head_is_refused(vmlinux: Btf, capture: dict[str, Any]) -> None:
    memory = image(capture)
    tasks = [t for t in captured_tasks(capture) if t.pid == t.tgid]
    third, fifth = tasks[3], tasks[5]
    off = layout(vmlinux).tasks
    put_word(memory, fifth.address + off, third.address + off)  # 5 -> 3 -> 4 -> 5 -> ...
    with pytest.raises(KernelAccessError, match="a cycle"):
        walk_tasks(memory, capture["start"], vmlinux)


def test_a_link_out_of_kernel_space_is_refused(vmlinux: Btf, capture: dict[str, Any]) -> None:
    memory = image(capture)
    leader = next(t for t in captured_tasks(capture) if t.pid == 2)
    put_word(memory, leader.address + layout(vmlinux).tasks, 0x7FFF_0000_1000)
    with pytest.raises(KernelAccessError, match="implausible link"):
        walk_tasks(memory, capture["start"], vmlinux)


def test_the_walk_is_bounded(vmlinux: Btf, capture: dict[str, Any]) -> None:
    with pytest.raises(KernelAccessError, match="implausible link"):
        walk_tasks(image(capture), capture["start"], vmlinux, limit=20)


def test_an_unreadable_task_fails_the_walk(vmlinux: Btf, capture: dict[str, Any]) -> None:
    memory = image(capture)
    victim = next(t for t in captured_tasks(capture) if t.pid == 2)
    del memory.blocks[word_at(memory, victim.address + layout(vmlinux).tasks)[0]]
    with pytest.raises(MemoryReadError):
        walk_tasks(memory, capture["start"], vmlinux)


# --- the pid table ------------------------------------------------------------------------------


def test_pid_table_replays_the_capture(vmlinux: Btf, capture: dict[str, Any]) -> None:
    """The xarray walked over the captured nodes gives the captured pids, and each pid's task
    is the task the task list holds with that pid (the capture is of one quiet moment)."""
    table = pid_table(image(capture), capture["start"], vmlinux)
    assert sorted([nr, task] for nr, task in table.items()) == capture["pid_table"]
    on_list = {t.pid: t.address for t in captured_tasks(capture) if t.pid}
    assert table == on_list


def test_an_implausible_node_is_refused(vmlinux: Btf, capture: dict[str, Any]) -> None:
    """A node whose shift is no multiple of 6 is not an xarray node: refused, not walked."""
    memory = image(capture)
    offsets = pid_layout(vmlinux)
    slots_read = {start - offsets.node_slots for start in memory.blocks}  # node addresses
    nodes = [
        start
        for start, data in memory.blocks.items()
        if len(data) == 1 and start - offsets.node_shift in slots_read
    ]
    assert nodes, "the capture holds the nodes' shift bytes"
    memory.blocks[nodes[0]] = bytes([5])
    with pytest.raises(KernelAccessError, match="implausible shift"):
        pid_table(memory, capture["start"], vmlinux)


# --- the captured views, judged against memory --------------------------------------------------


def views(capture: dict[str, Any]) -> dict[str, set[int]]:
    found = {view: set(pids) for view, pids in capture["views"].items()}
    found[MEMORY] = {t.pid for t in captured_tasks(capture) if t.pid}
    found[PID_TABLE] = {nr for nr, _ in capture["pid_table"]}
    found[STAT] = set(found[KILL])  # stat and kill take one lookup; the capture took kill
    return found


def hidden(capture: dict[str, Any], seen: dict[str, set[int]], pid: int) -> HiddenPid:
    seen_by, missing_from = disagreements(seen)[pid]
    comm = next(t.comm for t in captured_tasks(capture) if t.pid == pid)
    return HiddenPid(pid, pid, seen_by, missing_from, comm)


def test_pid_1_is_skipped_by_the_iterator_walk(capture: dict[str, Any]) -> None:
    found = assess_hidden(hidden(capture, views(capture), 1))
    assert found.technique == "iterator-skips-task" and found.severity is Severity.LOW
    assert found.disposition is Disposition.SUSPICIOUS
    assert found.evidence["missing_from"] == [BPF_ITER, ITER_MAP]
    assert "nothing hides it from ps" in found.summary


def test_a_task_hidden_from_every_text_view(capture: dict[str, Any]) -> None:
    """What a rootkit that filters getdents, kill, stat and the iterator's read leaves: memory
    and the map copy have it; the finding names the views that lie."""
    seen = views(capture)
    victim = 2  # kthreadd, in every view of the capture
    for view in (LISTING, TASKS, KILL, STAT, BPF_ITER):
        seen[view].discard(victim)
    found = assess_hidden(hidden(capture, seen, victim))
    assert found.technique == "hidden-process" and found.severity is Severity.CRITICAL
    assert found.evidence["seen_by"] == [ITER_MAP, MEMORY, PID_TABLE]
    assert found.evidence["missing_from"] == [LISTING, TASKS, KILL, BPF_ITER, STAT]
    assert found.subject == "pid 2 (kthreadd)"


def test_a_read_filtered_iterator(capture: dict[str, Any]) -> None:
    seen = views(capture)
    seen[BPF_ITER].discard(2)
    found = assess_hidden(hidden(capture, seen, 2))
    assert found.technique == "filtered-view" and found.severity is Severity.CRITICAL
    assert found.evidence["missing_from"] == [BPF_ITER]


def test_a_task_off_the_task_list(capture: dict[str, Any]) -> None:
    """Unlinked from the task list (DKOM): the pid table still answers kill and stat."""
    seen = views(capture)
    seen[MEMORY].discard(2)
    found = assess_hidden(hidden(capture, seen, 2))
    assert found.technique == "task-off-task-list" and found.severity is Severity.HIGH
    assert found.evidence["missing_from"] == [MEMORY]
    assert "the pid table still has it" in found.summary


def test_a_pid_taken_out_of_the_pid_table(capture: dict[str, Any]) -> None:
    """Every lookup by pid fails (kill, stat, the listing's next_tgid, the iterator's
    find_ge_pid): only the task list still has the task."""
    seen = views(capture)
    for view in (LISTING, TASKS, KILL, STAT, BPF_ITER, ITER_MAP, PID_TABLE):
        seen[view].discard(2)
    found = assess_hidden(hidden(capture, seen, 2))
    assert found.technique == "hidden-process" and found.severity is Severity.CRITICAL
    assert found.evidence["seen_by"] == [MEMORY]
    assert found.evidence["missing_from"] == [
        LISTING,
        TASKS,
        KILL,
        BPF_ITER,
        ITER_MAP,
        PID_TABLE,
        STAT,
    ]


def test_a_task_name_is_shown_escaped(capture: dict[str, Any]) -> None:
    """comm is the task's own choice (prctl PR_SET_NAME): shown with controls made visible."""
    base = hidden(capture, views(capture), 1)
    evil = HiddenPid(1, 1, base.seen_by, base.missing_from, "\x1b[2Jok\n")
    found = assess_hidden(evil)
    assert "\x1b" not in found.subject and "\n" not in found.summary
    assert found.evidence["comm"] == "\x1b[2Jok\n"  # evidence keeps the raw name


# --- the re-checks: only the suspects looked at -------------------------------------------------


def test_each_task_is_still_linked_where_the_walk_found_it(
    vmlinux: Btf, capture: dict[str, Any]
) -> None:
    """Every task of the capture, looked at in place (its own span, its leader's neighbours,
    its group), is found as the whole walk found it."""
    tasks = [t for t in captured_tasks(capture) if t.pid]
    known = {t.pid: t.address for t in tasks}
    assert tasks_in_place(image(capture), vmlinux, known) == {t.pid: t for t in tasks}


def test_a_task_unlinked_from_the_list_is_not_still_linked(
    vmlinux: Btf, capture: dict[str, Any]
) -> None:
    """list_del() points the neighbours past the task and leaves the task's own links (a
    rootkit's copy may not poison them): the neighbours no longer point back."""
    memory = image(capture)
    off = layout(vmlinux).tasks
    leaders = [t for t in captured_tasks(capture) if t.pid == t.tgid and t.pid]
    victim = next(t for t in leaders if t.pid == 2)
    after = struct.unpack("<Q", memory.read(victim.address + off, 8))[0]
    before = struct.unpack("<Q", memory.read(victim.address + off + 8, 8))[0]
    put_word(memory, before, after)  # prev->next = next
    put_word(memory, after + 8, before)  # next->prev = prev
    assert tasks_in_place(memory, vmlinux, {2: victim.address}) == {}
    others = {t.pid: t.address for t in leaders if t.pid != 2}
    assert set(tasks_in_place(memory, vmlinux, others)) == set(others)


def test_a_task_linked_to_itself_is_not_still_linked(vmlinux: Btf, capture: dict[str, Any]) -> None:
    """list_del_init() leaves the task a list of its own: on a list, but not the task list."""
    memory = image(capture)
    off = layout(vmlinux).tasks
    victim = next(t for t in captured_tasks(capture) if t.pid == 2)
    put_word(memory, victim.address + off, victim.address + off)
    put_word(memory, victim.address + off + 8, victim.address + off)
    assert tasks_in_place(memory, vmlinux, {2: victim.address}) == {}


def test_a_pid_now_another_tasks_is_not_still_linked(vmlinux: Btf, capture: dict[str, Any]) -> None:
    """The address holds another pid (the task exited and the memory was reused)."""
    two = next(t for t in captured_tasks(capture) if t.pid == 2)
    assert tasks_in_place(image(capture), vmlinux, {3: two.address}) == {}


def test_a_thread_out_of_its_group_is_not_still_linked(
    vmlinux: Btf, capture: dict[str, Any]
) -> None:
    """A thread at its address, its leader on the list, but the group's ring skips it."""
    memory = image(capture)
    o = layout(vmlinux)
    addresses = {t.address for t in captured_tasks(capture)}

    def links(task: MemTask) -> tuple[int, int]:
        return struct.unpack("<2Q", memory.read(task.address + o.link, 16))

    # a thread between two threads: its neighbours are tasks the walk read
    thread = next(
        t
        for t in captured_tasks(capture)
        if t.pid != t.tgid and all(n - o.link in addresses for n in links(t))
    )
    after, before = links(thread)
    put_word(memory, before, after)
    put_word(memory, after + 8, before)
    assert tasks_in_place(memory, vmlinux, {thread.pid: thread.address}) == {}


def test_pid_lookups_find_what_the_table_walk_finds(vmlinux: Btf, capture: dict[str, Any]) -> None:
    """Looked up one by one (idr_find's descent), the table's pids give the walk's tasks, and
    pids the table lacks (free, beyond every node, 0) give none."""
    memory = image(capture)
    table = pid_table(memory, capture["start"], vmlinux)
    absent = [0, max(table) + 1, 4 * max(table), 1 << 21, (1 << 22) - 1]
    assert not set(absent) & set(table)
    asked = [*table, *absent]
    assert pids_in_table(memory, capture["start"], vmlinux, asked) == table
    assert pids_in_table(memory, capture["start"], vmlinux, [1]) == {1: table[1]}


OLD_OFFSETS = {
    ("task_struct", "tasks"): 0,
    ("task_struct", "pid"): 16,
    ("task_struct", "tgid"): 20,
    ("task_struct", "group_leader"): 24,
    ("task_struct", "thread_group"): 32,
    ("task_struct", "comm"): 48,
    ("task_struct", "signal"): 64,
    ("task_struct", "children"): 80,
    ("task_struct", "sibling"): 96,
}


T = TypeVar("T")


class OldBtf:
    """task_struct as kernels before 6.7 lay it out (threads on thread_group, a ring with no
    head; signal_struct has no thread_head): offsets of a small made-up struct."""

    def member_offset(self, struct_name: str, member: str) -> int | None:
        return OLD_OFFSETS.get((struct_name, member))

    def derived(self, make: Callable[[Any], T]) -> T:
        return make(self)


def old_tasks(stray: bool = False) -> tuple[Image, dict[int, int]]:
    """init_task (pid 0) and process 10 on the task list; 10's threads 11 and 12 on its ring;
    10 on init_task's children list. With `stray`, process 13 is 10's child and on no list
    but its parent's children list."""
    base = 0xFFFF_8880_0000_0000
    at = {pid: base + 0x1000 * i for i, pid in enumerate((0, 10, 11, 12, 13))}
    tgid = {0: 0, 10: 10, 11: 10, 12: 10, 13: 13}
    tasks = {0: (at[10], at[10]), 10: (at[0], at[0]), 11: (0, 0), 12: (0, 0), 13: (0, 0)}
    ring = {10: (at[11], at[12]), 11: (at[12], at[10]), 12: (at[10], at[11])}
    ring |= {0: (at[0], at[0]), 13: (at[13], at[13])}
    children = {pid: at[pid] + 80 for pid in at} | {0: at[10] + 96}  # heads: 0 -> 10
    sibling = {10: at[0] + 80, 13: at[10] + 80}  # back round to the parent's head
    if stray:
        children[10] = at[13] + 96
    memory = Image()
    for pid, address in at.items():
        leader = at[tgid[pid]]
        nxt, prv = tasks[pid]
        group = tuple(a + 32 for a in ring[pid])
        name = f"t{pid}".encode()
        kin = (children[pid], 0, sibling.get(pid, 0), 0)
        raw = struct.pack(
            "<2QiiQ2Q16sQQ4Q", nxt, prv, pid, tgid[pid], leader, *group, name, 0, 0, *kin
        )
        memory.put(address, raw)
    return memory, at


def test_threads_on_thread_group_before_6_7() -> None:
    """The walk and the in-place re-check on the older layout: the ring of thread_group."""
    memory, at = old_tasks()
    btf: Any = OldBtf()
    found = walk_tasks(memory, at[11], btf)
    assert sorted((t.pid, t.tgid, t.comm) for t in found) == [
        (0, 0, "t0"),
        (10, 10, "t10"),
        (11, 10, "t11"),
        (12, 10, "t12"),
    ]
    known = {pid: at[pid] for pid in (10, 11, 12)}
    assert set(tasks_in_place(memory, btf, known)) == {10, 11, 12}
    put_word(memory, at[11] + 32, at[10] + 32)  # 11 -> 10: 12 is off its group's ring
    put_word(memory, at[10] + 40, at[11] + 32)
    assert set(tasks_in_place(memory, btf, known)) == {10, 11}


def test_a_child_off_the_task_list_is_a_stray() -> None:
    """Its parent's children list still holds it: the walk names it, and only it."""
    btf: Any = OldBtf()
    memory, at = old_tasks()
    assert walk_with_strays(memory, at[10], btf)[1] == []
    memory, at = old_tasks(stray=True)
    listed, strays = walk_with_strays(memory, at[10], btf)
    assert sorted(t.pid for t in listed) == [0, 10, 11, 12]
    assert strays == [MemTask(13, 13, "t13", at[13])]
    # 13 forked after the walk passed its place: linked between 10 and init_task by the time
    # the children lists are followed, so it is no stray (the race every busy machine has)
    walk = _Walk(memory, layout(btf), MAX_TASKS)
    walk.run(at[10])
    for at_word, value in ((at[13], at[0]), (at[13] + 8, at[10]), (at[10], at[13])):
        put_word(memory, at_word, value)
    put_word(memory, at[0] + 8, at[13])
    assert walk.strays() == []


def test_a_walk_told_where_tasks_are_finds_the_same(vmlinux: Btf, capture: dict[str, Any]) -> None:
    """Told where the pid table has tasks, the walk reads them ahead in runs; the capture holds
    each task's own read only, so those runs fail and each task is read alone, as before."""
    memory = image(capture)
    near = [address for _, address in capture["pid_table"]]
    assert walk_tasks(memory, capture["start"], vmlinux, near=near) == captured_tasks(capture)


def test_neighbours_are_read_together() -> None:
    """Spans close together come from one read; a lone one and a run that fails to read are
    left to the caller."""
    base = 0xFFFF_8880_0010_0000
    memory = Image()
    memory.put(base, bytes(range(256)) * 64)  # 16 KiB
    reads: list[tuple[int, int]] = []
    read = memory.read

    def counted(address: int, size: int) -> bytes:
        reads.append((address, size))
        return read(address, size)

    memory.read = counted  # type: ignore[method-assign]
    far = base + (1 << 30)
    near = [base + 4096, base, base + 8000, far, far + 100]
    spans = read_spans(memory, near, 16)
    assert spans == {a: read(a, 16) for a in (base, base + 4096, base + 8000)}
    assert reads == [(base, 8016), (far, 116)]  # one read a run; the unmapped run fails
