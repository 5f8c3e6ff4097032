"""The kernel's task list read from kernel memory: the ground truth the process views are
checked against.

Every thread-group leader is on one circular list, `task_struct.tasks`, that also holds
`init_task` (pid 0); each group's threads hang off `signal_struct.thread_head` through
`task_struct.thread_node` (6.7+; older kernels link them on `task_struct.thread_group`).
Offsets come from vmlinux BTF. The walk starts at a task we know without kallsyms: our own
(bpf_get_current_task(), kernel/bpf/current_task.py), through its group leader, since a
thread's own `tasks` member is not on the list. Reads go through the kernel-memory reader,
which fails a read of freed memory rather than faulting; a task that exits under the walk can
break it, so a failed walk is taken again (ATTEMPTS) before it is given up.

A rootkit that hides a process from /proc, kill(2) and the BPF task iterator leaves it here:
unlinking it from this list too is a different technique (the pid stays in the pid table,
so kill(2) and stat of /proc/<pid> still find it, and the cross-check names this list).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory

MAX_TASKS = 1 << 22  # PID_MAX_LIMIT: no list holds more tasks than there are pids
PID_LIMIT = 1 << 22
COMM_LEN = 16
ATTEMPTS = 3
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
    signal: int | None  # with thread_head/thread_node (6.7+)
    thread_head: int | None
    thread_node: int | None
    thread_group: int | None  # before 6.7

    @property
    def span(self) -> tuple[int, int]:
        """The bytes of a task_struct one read fetches: every member the walk needs."""
        members = [self.tasks, self.pid, self.tgid, self.group_leader, self.comm + COMM_LEN]
        links = [m for m in (self.thread_node, self.thread_group) if m is not None]
        members += [m for m in (self.signal, *links) if m is not None]
        return min(members), max(members) + 16  # a list_head's next and prev


def layout(btf: Btf) -> TaskLayout:
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
        signal=btf.member_offset("task_struct", "signal"),
        thread_head=btf.member_offset("signal_struct", "thread_head"),
        thread_node=btf.member_offset("task_struct", "thread_node"),
        thread_group=btf.member_offset("task_struct", "thread_group"),
    )
    if found.thread_node is None and found.thread_group is None:
        raise KernelAccessError("vmlinux BTF", "struct task_struct links no threads")
    return found


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class _Walk:
    """One walk: every task read once, every link checked, the whole walk bounded."""

    def __init__(self, memory: KernelMemory, offsets: TaskLayout, limit: int) -> None:
        self.memory, self.o, self.limit = memory, offsets, limit
        self.seen: dict[int, MemTask] = {}
        self.raw: dict[int, bytes] = {}

    def fields(self, task: int) -> bytes:
        if task < KERNEL_SPACE:
            raise KernelAccessError(WHAT, f"implausible task_struct at {task:#x}")
        if task not in self.raw:
            low, high = self.o.span
            self.raw[task] = self.memory.read(task + low, high - low)
        return self.raw[task]

    def word(self, task: int, offset: int) -> int:
        low = self.o.span[0]
        return int(struct.unpack_from("<Q", self.fields(task), offset - low)[0])

    def record(self, task: int) -> MemTask:
        raw, low = self.fields(task), self.o.span[0]
        pid, tgid = (struct.unpack_from("<i", raw, at - low)[0] for at in (self.o.pid, self.o.tgid))
        if not (0 <= pid < PID_LIMIT and 0 <= tgid < PID_LIMIT):
            raise KernelAccessError(WHAT, f"implausible pid {pid} at {task:#x}")
        comm = _comm(raw[self.o.comm - low : self.o.comm - low + COMM_LEN])
        return MemTask(pid, tgid, comm, task)

    def ring(self, node: int, stop: int, next_of: Callable[[int], int], member: int) -> list[int]:
        """The containers of a circular list's nodes from `node` on, up to `stop`."""
        found: list[int] = []
        seen: set[int] = set()
        while node != stop:
            if node < KERNEL_SPACE or len(self.seen) + len(found) >= self.limit:
                raise KernelAccessError(WHAT, f"implausible link {node:#x} after {len(found)}")
            if node in seen:
                raise KernelAccessError(WHAT, f"a cycle at {node:#x} that misses its head")
            seen.add(node)
            found.append(node - member)
            node = next_of(node)
        return found

    def add(self, task: int) -> None:
        if task not in self.seen:
            self.seen[task] = self.record(task)

    def threads(self, leader: int) -> list[int]:
        """The group's threads, from the leader's own links both ways round to the list head
        in signal_struct: every link is a task's, already read with its fields."""
        o = self.o
        if o.signal is not None and o.thread_head is not None and o.thread_node is not None:
            head, member = self.word(leader, o.signal) + o.thread_head, o.thread_node
        else:
            assert o.thread_group is not None  # before 6.7: a list with no head, round to us
            head, member = leader + o.thread_group, o.thread_group
        ahead = self.ring(self.word(leader, member), head, self._link(member, 0), member)
        if head == leader + member:
            return ahead
        behind = self.ring(self.word(leader, member + 8), head, self._link(member, 8), member)
        return [t for t in dict.fromkeys([*ahead, *behind]) if t != leader]

    def _link(self, member: int, which: int) -> Callable[[int], int]:
        """list_head.next (0) or .prev (8) of the list member `member` of a task, from the
        task's one read."""
        return lambda node: self.word(node - member, member + which)

    def run(self, start: int) -> list[MemTask]:
        o = self.o
        leader = self.word(start, o.group_leader)  # a thread's own `tasks` is not on the list
        first = self.word(leader, o.tasks)
        leaders = [leader, *self.ring(first, leader + o.tasks, self._link(o.tasks, 0), o.tasks)]
        for task in leaders:
            self.add(task)
            for thread in self.threads(task):
                self.add(thread)
        return list(self.seen.values())


def walk_tasks(memory: KernelMemory, start: int, btf: Btf, limit: int = MAX_TASKS) -> list[MemTask]:
    """Every task on the kernel's task list and in each thread group, from the task at
    `start`; a walk that breaks (a task freed under it) is taken again, ATTEMPTS in all."""
    offsets = layout(btf)
    failure: KernelAccessError | None = None
    for _ in range(ATTEMPTS):
        try:
            return _Walk(memory, offsets, limit).run(start)
        except KernelAccessError as exc:
            failure = exc
    assert failure is not None
    raise failure


__all__ = ["MemTask", "TaskLayout", "layout", "walk_tasks"]
