"""The kernel's task list read from kernel memory: the ground truth the process views are
checked against.

Every thread-group leader is on one circular list, `task_struct.tasks`, that also holds
`init_task` (pid 0); each group's threads hang off `signal_struct.thread_head` through
`task_struct.thread_node` (6.7+; older kernels link them on `task_struct.thread_group`).
Offsets come from vmlinux BTF. The walk starts at a task we know without kallsyms: our own
(bpf_get_current_task(), kernel/bpf/current_task.py), through its group leader, since a
thread's own `tasks` member is not on the list. Reads go through the kernel-memory reader,
which fails a read of freed memory rather than faulting; a task that exits under the walk can
break it, so a failed walk is taken again (ATTEMPTS) before it is given up. Each task's members
are fetched by one read of the span that covers them and unpacked by one struct call: the walk's
cost is a read per task, not Python per member.

Beside the list, each walked task's `children` list (its children linked through their
`sibling`) is followed: the members are leaders the walk has read already, so it costs no read,
and a child the walk did not reach (a stray) is a task off the task list that its parent still
holds, which wait(2) needs and a rootkit's unlinking leaves (walk_with_strays).

A re-check of a few tasks (tasks_in_place) reads only those tasks, their leaders' neighbours on
the list and their thread groups, not the whole list.

A rootkit that hides a process from /proc, kill(2) and the BPF task iterator leaves it here:
unlinking it from this list too is a different technique (the pid stays in the pid table,
so kill(2) and stat of /proc/<pid> still find it, and the cross-check names this list).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory

MAX_TASKS = 1 << 22  # PID_MAX_LIMIT: no list holds more tasks than there are pids
PID_LIMIT = 1 << 22
COMM_LEN = 16
ATTEMPTS = 3
# Neighbouring task_structs (and struct pids) are read together when this close: a read call
# costs ~3 us, a KiB more in one read ~0.1 us (the eBPF reader, measured on the dev VM).
RUN_GAP = 1 << 14
RUN_MOST = 1 << 18
WHAT = "task list (kernel memory)"


@dataclass(frozen=True)
class MemTask:
    """One task as kernel memory holds it: pid is the thread id (init namespace), tgid its
    process, address its task_struct."""

    pid: int
    tgid: int
    comm: str
    address: int


@dataclass(frozen=True)
class TaskLayout:
    tasks: int
    pid: int
    tgid: int
    comm: int
    group_leader: int
    children: int  # the head of its children's `sibling` links
    sibling: int
    signal: int | None  # with thread_head/thread_node (6.7+)
    thread_head: int | None
    thread_node: int | None
    thread_group: int | None  # before 6.7

    @cached_property
    def span(self) -> tuple[int, int]:
        """The bytes of a task_struct one read fetches: every member the walk needs."""
        members = [self.tasks, self.pid, self.tgid, self.group_leader, self.comm + COMM_LEN]
        members += [self.children, self.sibling]
        members += [m for m in (self.signal, self.link) if m is not None]
        return min(members), max(members) + 16  # a list_head's next and prev

    @property
    def link(self) -> int:
        """The list_head that links a group's threads: thread_node (6.7+) or thread_group."""
        found = self.thread_node if self.has_thread_head else self.thread_group
        assert found is not None  # layout() refuses a task_struct with neither
        return found

    @property
    def has_thread_head(self) -> bool:
        """6.7+: the threads hang off signal_struct.thread_head, a head no task holds."""
        return None not in (self.signal, self.thread_head, self.thread_node)


def layout(btf: Btf) -> TaskLayout:
    """The offsets, found in BTF once per Btf (a scan of one kernel asks many times)."""
    return btf.derived(_layout)


def _layout(btf: Btf) -> TaskLayout:
    def need(member: str) -> int:
        found = btf.member_offset("task_struct", member)
        if found is None:
            raise KernelAccessError("vmlinux BTF", f"no struct task_struct.{member}")
        return found

    found = TaskLayout(
        tasks=need("tasks"),
        pid=need("pid"),
        tgid=need("tgid"),
        comm=need("comm"),
        group_leader=need("group_leader"),
        children=need("children"),
        sibling=need("sibling"),
        signal=btf.member_offset("task_struct", "signal"),
        thread_head=btf.member_offset("signal_struct", "thread_head"),
        thread_node=btf.member_offset("task_struct", "thread_node"),
        thread_group=btf.member_offset("task_struct", "thread_group"),
    )
    if found.thread_node is None and found.thread_group is None:
        raise KernelAccessError("vmlinux BTF", "struct task_struct links no threads")
    return found


def read_spans(memory: KernelMemory, addresses: Iterable[int], size: int) -> dict[int, bytes]:
    """`size` bytes at each of `addresses` that has neighbours: sorted, spans closer than
    RUN_GAP to the next share one read of up to RUN_MOST bytes (slab objects sit side by
    side, and a read call costs more than the bytes between them). A lone address, or a run
    whose read fails (memory between them unmapped), is left out: the caller reads those one
    by one, as it would have."""
    found: dict[int, bytes] = {}
    for run in _runs(sorted({a for a in addresses if a >= KERNEL_SPACE}), size):
        try:
            raw = memory.read(run[0], run[-1] + size - run[0])
        except KernelAccessError:
            continue
        found.update((a, raw[a - run[0] : a - run[0] + size]) for a in run)
    return found


def _runs(addresses: list[int], size: int) -> list[list[int]]:
    """The sorted addresses cut into runs that one read covers; runs of one are dropped."""
    runs: list[list[int]] = []
    run: list[int] = []
    for a in addresses:
        if run and (a - run[-1] - size > RUN_GAP or a + size - run[0] > RUN_MOST):
            runs.append(run)
            run = []
        run.append(a)
    runs.append(run)
    return [r for r in runs if len(r) > 1]


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class _Fields(NamedTuple):
    """What one read of a task_struct's span holds, unpacked once (a tuple: one is made per
    task per walk, and a frozen dataclass costs several times as much to build)."""

    pid: int
    tgid: int
    comm: bytes
    leader: int
    tasks: tuple[int, int]  # tasks.next, tasks.prev
    link: tuple[int, int]  # the thread link's next, prev
    children: int  # children.next
    sibling: int  # sibling.next
    signal: int


class _Unpacker:
    """The span's members at their offsets within one read, unpacked by one struct call (pad
    bytes between them), in the order _Fields takes them."""

    def __init__(self, o: TaskLayout) -> None:
        self.low, high = o.span
        self.size = high - self.low
        members = [  # (offset, format, how many values), in _Fields' order
            (o.pid, "i", 1),
            (o.tgid, "i", 1),
            (o.comm, f"{COMM_LEN}s", 1),
            (o.group_leader, "Q", 1),
            (o.tasks, "2Q", 2),
            (o.link, "2Q", 2),
            (o.children, "Q", 1),
            (o.sibling, "Q", 1),
            *([(o.signal, "Q", 1)] if o.signal is not None and o.has_thread_head else []),
        ]
        fmt, at = "<", self.low
        for offset, code, _ in sorted(members):
            if offset < at:  # no two members share bytes in any task_struct
                raise KernelAccessError("vmlinux BTF", f"task_struct members overlap at {offset}")
            fmt += f"{offset - at}x{code}" if offset > at else code
            at = offset + struct.calcsize("<" + code)
        self.struct = struct.Struct(fmt)
        self.order = self._order(members)

    @staticmethod
    def _order(members: list[tuple[int, str, int]]) -> list[int]:
        """Where each _Fields value sits in the unpacked tuple (members sorted by offset)."""
        placed = sorted(range(len(members)), key=lambda i: members[i][0])
        starts: dict[int, int] = {}
        at = 0
        for i in placed:
            starts[i] = at
            at += members[i][2]
        return [starts[i] for i in range(len(members))]

    def unpack(self, raw: bytes) -> _Fields:
        v = self.struct.unpack(raw[: self.struct.size])
        pid, tgid, comm, leader, tasks, link, children, sibling, *signal = self.order
        return _Fields(
            v[pid],
            v[tgid],
            v[comm],
            v[leader],
            (v[tasks], v[tasks + 1]),
            (v[link], v[link + 1]),
            v[children],
            v[sibling],
            v[signal[0]] if signal else 0,
        )


class _Walk:
    """One walk: every task read once, every link checked, the whole walk bounded."""

    def __init__(self, memory: KernelMemory, offsets: TaskLayout, limit: int) -> None:
        self.memory, self.o, self.limit = memory, offsets, limit
        self.unpacker = _Unpacker(offsets)
        self.seen: dict[int, MemTask] = {}
        self.read: dict[int, _Fields] = {}
        self.groups: dict[int, set[int]] = {}  # leader -> its threads, for still_there()

    def prefetch(self, near: Iterable[int]) -> None:
        """Read the tasks likely at `near` ahead of the walk, neighbours together; the walk
        still reaches each through its links, and reads any not fetched here on its own."""
        u = self.unpacker
        spans = read_spans(self.memory, (a + u.low for a in near if a >= KERNEL_SPACE), u.size)
        self.read.update((at - u.low, u.unpack(raw)) for at, raw in spans.items())

    def fields(self, task: int) -> _Fields:
        found = self.read.get(task)
        if found is None:
            if task < KERNEL_SPACE:
                raise KernelAccessError(WHAT, f"implausible task_struct at {task:#x}")
            u = self.unpacker
            found = self.read[task] = u.unpack(self.memory.read(task + u.low, u.size))
        return found

    def record(self, task: int) -> MemTask:
        f = self.fields(task)
        if not (0 <= f.pid < PID_LIMIT and 0 <= f.tgid < PID_LIMIT):
            raise KernelAccessError(WHAT, f"implausible pid {f.pid} at {task:#x}")
        return MemTask(f.pid, f.tgid, _comm(f.comm), task)

    def ring(self, node: int, stop: int, member: int, which: int) -> list[int]:
        """The containers of a circular list's nodes from `node` on, up to `stop`, following
        next (which=0) or prev (1) of the list member at `member` of each task."""
        found: list[int] = []
        seen: set[int] = set()
        tasks = member == self.o.tasks
        while node != stop:
            if node < KERNEL_SPACE or len(self.seen) + len(found) >= self.limit:
                raise KernelAccessError(WHAT, f"implausible link {node:#x} after {len(found)}")
            if node in seen:
                raise KernelAccessError(WHAT, f"a cycle at {node:#x} that misses its head")
            seen.add(node)
            found.append(node - member)
            f = self.fields(node - member)
            node = (f.tasks if tasks else f.link)[which]
        return found

    def add(self, task: int) -> None:
        if task not in self.seen:
            self.seen[task] = self.record(task)

    def threads(self, leader: int) -> list[int]:
        """The group's threads, from the leader's own links both ways round to the list head
        in signal_struct: every link is a task's, already read with its fields."""
        o, f = self.o, self.fields(leader)
        member = o.link
        # before 6.7: a list with no head, round to the leader itself
        head = f.signal + (o.thread_head or 0) if o.has_thread_head else leader + member
        ahead = self.ring(f.link[0], head, member, 0)
        if head == leader + member:
            return ahead
        behind = self.ring(f.link[1], head, member, 1)
        return [t for t in dict.fromkeys([*ahead, *behind]) if t != leader]

    def run(self, start: int) -> list[MemTask]:
        o = self.o
        leader = self.fields(start).leader  # a thread's own `tasks` is not on the list
        first = self.fields(leader).tasks[0]
        leaders = [leader, *self.ring(first, leader + o.tasks, o.tasks, 0)]
        for task in leaders:
            self.add(task)
            for thread in self.threads(task):
                self.add(thread)
        return list(self.seen.values())

    def strays(self) -> list[MemTask]:
        """The tasks on the walked tasks' children lists that the walk did not reach."""
        o, found = self.o, {}
        for parent in list(self.seen):
            head, node, count = parent + o.children, self.fields(parent).children, 0
            while node != head:
                if node < KERNEL_SPACE or count >= self.limit:
                    raise KernelAccessError(WHAT, f"implausible child link {node:#x}")
                child, count = node - o.sibling, count + 1
                if child not in self.seen and not self.linked_now(child):
                    found[child] = self.record(child)
                node = self.fields(child).sibling
        return list(found.values())

    def linked_now(self, task: int) -> bool:
        """Read afresh, the task's neighbours on the task list point back at it: a task forked
        after the walk passed its place is no stray (the walk's own reads are older)."""
        here = self.o.tasks + task
        after, before = struct.unpack("<2Q", self.memory.read(here, 16))
        if min(after, before) < KERNEL_SPACE or here in (after, before):
            return False  # never linked, unlinked, or linked to itself by INIT_LIST_HEAD
        after_prev = int.from_bytes(self.memory.read(after + 8, 8), "little")
        return after_prev == here and int.from_bytes(self.memory.read(before, 8), "little") == here

    def still_there(self, task: int, pid: int) -> MemTask | None:
        """The task at `task` if it still has `pid`, its leader is still linked between its
        neighbours on the task list, and it is still in its leader's group; else None."""
        record = self.record(task)
        leader = self.fields(task).leader
        if record.pid != pid or not self.on_task_list(leader):
            return None
        if task != leader and task not in self.group(leader):
            return None
        return record

    def on_task_list(self, leader: int) -> bool:
        """Both neighbours on the task list point back at the leader's `tasks`."""
        member = self.o.tasks
        after, before = self.fields(leader).tasks
        here = leader + member
        if min(after, before) < KERNEL_SPACE or here in (after, before):
            return False  # never linked, or unlinked by list_del_init (linked to itself)
        return (
            self.fields(after - member).tasks[1] == here
            and self.fields(before - member).tasks[0] == here
        )

    def group(self, leader: int) -> set[int]:
        found = self.groups.get(leader)
        if found is None:
            found = self.groups[leader] = set(self.threads(leader))
        return found


def walk_tasks(
    memory: KernelMemory, start: int, btf: Btf, limit: int = MAX_TASKS, near: Iterable[int] = ()
) -> list[MemTask]:
    """Every task on the kernel's task list and in each thread group, from the task at
    `start`; a walk that breaks (a task freed under it) is taken again, ATTEMPTS in all.
    `near`: where tasks likely are (the pid table's, the iterator's), read ahead in runs."""
    return walk_with_strays(memory, start, btf, limit, near)[0]


def walk_with_strays(
    memory: KernelMemory, start: int, btf: Btf, limit: int = MAX_TASKS, near: Iterable[int] = ()
) -> tuple[list[MemTask], list[MemTask]]:
    """walk_tasks(), and the strays: tasks on the walked tasks' children lists that are not
    on the task list (nor in a thread group of it)."""
    offsets = layout(btf)
    near = list(near)
    failure: KernelAccessError | None = None
    for _ in range(ATTEMPTS):
        try:
            walk = _Walk(memory, offsets, limit)
            walk.prefetch(near)
            return walk.run(start), walk.strays()
        except KernelAccessError as exc:
            failure = exc
    assert failure is not None
    raise failure


def tasks_in_place(memory: KernelMemory, btf: Btf, known: Mapping[int, int]) -> dict[int, MemTask]:
    """pid -> task for each pid of `known` (pid -> task_struct address, from an earlier walk)
    whose task is still there: the same pid at the same address, its group leader linked
    between neighbours that point back at it, and itself in the leader's thread group. Only
    those tasks and their groups are read, not the whole list. A pid left out is not there
    any more (exited, moved, unreadable); only a whole walk says whether it is elsewhere.

    A task whose neighbours still point back at it is on a list; that it is the task list is
    what the earlier walk, from init_task's ring, showed."""
    walk = _Walk(memory, layout(btf), MAX_TASKS)
    walk.prefetch(known.values())  # a group's threads often sit side by side
    found: dict[int, MemTask] = {}
    for pid, task in known.items():
        with contextlib.suppress(KernelAccessError):
            if (record := walk.still_there(task, pid)) is not None:
                found[pid] = record
    return found


__all__ = [
    "MemTask",
    "TaskLayout",
    "layout",
    "read_spans",
    "tasks_in_place",
    "walk_tasks",
    "walk_with_strays",
]
