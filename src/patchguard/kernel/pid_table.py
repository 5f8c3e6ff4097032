"""The pid table of a pid namespace read from kernel memory: the other kernel structure that
knows every task, beside the task list (kernel/tasks.py).

find_vpid() (kill(2)), proc_pid_lookup() (stat of /proc/<pid>) and next_tgid() (the /proc
listing) all look pids up in `pid_namespace.idr`, an xarray from pid number to `struct pid`;
a task is the `struct pid`'s first entry on `tasks[PIDTYPE_PID]`. A rootkit that unlinks a
task from the task list leaves it here, and one that takes its pid out of this table (so that
every lookup fails) leaves it on the task list: the two together leave nothing unseen.

The namespace is the one of the task the walk starts from (our own: task->thread_pid's
numbers[level].ns), so the numbers are that namespace's. Offsets come from vmlinux BTF; the
xarray's encoding is include/linux/xarray.h's: an internal entry ends in binary 10, a node
pointer is an internal entry above 4096, a node holds XA_CHUNK_SIZE (64) slots, and the slot
`i` of a node of `shift` covers indices base + (i << shift).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64
from patchguard.kernel.tasks import read_spans

SLOTS = 64  # XA_CHUNK_SIZE with CONFIG_BASE_SMALL off
MAX_NODES = (1 << 22) // SLOTS * 2  # PID_MAX_LIMIT pids need fewer nodes than this
MAX_SHIFT = 36  # a tree deeper than this holds no 32-bit pid
WHAT = "pid table (kernel memory)"


@dataclass(frozen=True)
class PidLayout:
    thread_pid: int  # task_struct.thread_pid
    pid_level: int
    pid_numbers: int
    pid_tasks: int  # struct pid.tasks[PIDTYPE_PID] (the first hlist head)
    upid_size: int
    upid_ns: int
    ns_idr: int  # pid_namespace.idr.idr_rt.xa_head, from the namespace
    node_shift: int
    node_slots: int
    pid_links: int  # task_struct.pid_links[PIDTYPE_PID]


def layout(btf: Btf) -> PidLayout:
    """The offsets, found in BTF once per Btf (a scan of one kernel asks many times)."""
    return btf.derived(_layout)


def _layout(btf: Btf) -> PidLayout:
    need = btf.required_offset

    upid_size = btf.struct_size("upid")
    if upid_size is None:
        raise KernelAccessError("vmlinux BTF", "no struct upid")
    return PidLayout(
        thread_pid=need("task_struct", "thread_pid"),
        pid_level=need("pid", "level"),
        pid_numbers=need("pid", "numbers"),
        pid_tasks=need("pid", "tasks"),
        upid_size=upid_size,
        upid_ns=need("upid", "ns"),
        ns_idr=need("pid_namespace", "idr") + need("idr", "idr_rt") + need("xarray", "xa_head"),
        node_shift=need("xa_node", "shift"),
        node_slots=need("xa_node", "slots"),
        pid_links=need("task_struct", "pid_links"),
    )


def _is_node(entry: int) -> bool:
    return entry & 3 == 2 and entry > 4096


class _Walk:
    def __init__(self, memory: KernelMemory, offsets: PidLayout) -> None:
        self.memory, self.o = memory, offsets
        self.nodes = 0
        self.found: dict[int, int] = {}  # pid number -> task_struct address
        self.firsts: dict[int, bytes] = {}  # leaves' tasks[PIDTYPE_PID].first, read ahead

    def entry(self, entry: int, base: int) -> None:
        if _is_node(entry):
            self.node(entry - 2, base)
        elif _is_leaf(entry):
            self.leaf(entry, base)
        # else: NULL, a reserved pid not yet filled in, or a retry entry: no task

    def node(self, node: int, base: int) -> None:
        self.nodes += 1
        if node < KERNEL_SPACE or self.nodes > MAX_NODES:
            raise KernelAccessError(WHAT, f"implausible node {node:#x} after {self.nodes}")
        shift = self.memory.read(node + self.o.node_shift, 1)[0]
        if shift > MAX_SHIFT or shift % 6:
            raise KernelAccessError(WHAT, f"implausible shift {shift} at {node:#x}")
        slots = struct.unpack(f"<{SLOTS}Q", self.memory.read(node + self.o.node_slots, 8 * SLOTS))
        leaves = (e + self.o.pid_tasks for e in slots if _is_leaf(e))
        self.firsts.update(read_spans(self.memory, leaves, 8))  # neighbours read together
        for i, entry in enumerate(slots):
            if entry:
                self.entry(entry, base + (i << shift))

    def leaf(self, pid: int, nr: int) -> None:
        at = pid + self.o.pid_tasks  # tasks[PIDTYPE_PID].first
        raw = self.firsts.pop(at, None)
        first = int.from_bytes(raw, "little") if raw is not None else read_u64(self.memory, at)
        if first >= KERNEL_SPACE:  # else: a pgid or sid whose own task has gone
            self.found[nr] = first - self.o.pid_links


def namespace_of(memory: KernelMemory, task: int, offsets: PidLayout) -> int:
    """The pid namespace `task` lives in: its struct pid's numbers[level].ns."""
    pid = read_u64(memory, task + offsets.thread_pid)
    if pid < KERNEL_SPACE:
        raise KernelAccessError(WHAT, f"implausible struct pid {pid:#x}")
    level = read_u32(memory, pid + offsets.pid_level)
    if level > 32:  # MAX_PID_NS_LEVEL
        raise KernelAccessError(WHAT, f"implausible pid namespace level {level}")
    at = pid + offsets.pid_numbers + level * offsets.upid_size + offsets.upid_ns
    return read_u64(memory, at)


def pid_table(memory: KernelMemory, task: int, btf: Btf) -> dict[int, int]:
    """pid number -> task_struct address of every pid in the pid table of `task`'s namespace
    that a task has (as its own pid, not only as a process group or session)."""
    offsets = layout(btf)
    ns = namespace_of(memory, task, offsets)
    walk = _Walk(memory, offsets)
    walk.entry(read_u64(memory, ns + offsets.ns_idr), 0)
    return walk.found


def _node_shift(memory: KernelMemory, node: int, o: PidLayout) -> int:
    if node < KERNEL_SPACE:
        raise KernelAccessError(WHAT, f"implausible node {node:#x}")
    shift = memory.read(node + o.node_shift, 1)[0]
    if shift > MAX_SHIFT or shift % 6:
        raise KernelAccessError(WHAT, f"implausible shift {shift} at {node:#x}")
    return shift


class _Lookup:
    """Lookups by pid number, the way idr_find() descends the xarray: one slot per level,
    each node (its shift and its slots) read once however many pids pass through it."""

    def __init__(self, memory: KernelMemory, offsets: PidLayout, head: int) -> None:
        self.memory, self.o, self.head = memory, offsets, head
        self.nodes: dict[int, tuple[int, tuple[int, ...]]] = {}

    def node(self, node: int) -> tuple[int, tuple[int, ...]]:
        """(shift, slots) of the node."""
        if node not in self.nodes:
            shift = _node_shift(self.memory, node, self.o)
            raw = self.memory.read(node + self.o.node_slots, 8 * SLOTS)
            self.nodes[node] = shift, struct.unpack(f"<{SLOTS}Q", raw)
        return self.nodes[node]

    def entry(self, nr: int) -> int:
        """The entry at index `nr`: a struct pid, or 0 where the table has none."""
        entry, above = self.head, MAX_SHIFT + 6
        if not _is_node(entry):
            return entry if nr == 0 else 0  # a head that is no node holds index 0 alone
        while _is_node(entry):
            shift, slots = self.node(entry - 2)
            if shift >= above:
                raise KernelAccessError(WHAT, f"a node of shift {shift} below one of {above}")
            if above == MAX_SHIFT + 6 and nr >> shift >= SLOTS:
                return 0  # beyond what the top node covers
            entry, above = slots[(nr >> shift) % SLOTS], shift
        return entry

    def tasks(self, pids: Iterable[int]) -> dict[int, int]:
        """The tasks of `pids` that have one, as the table walk would find them: each pid's
        struct pid, then their tasks[PIDTYPE_PID].first, neighbours read together."""
        leaves = {nr: entry for nr in sorted(pids) if _is_leaf(entry := self.entry(nr))}
        at = {nr: entry + self.o.pid_tasks for nr, entry in leaves.items()}
        ahead = read_spans(self.memory, at.values(), 8)
        found: dict[int, int] = {}
        for nr, where in at.items():
            raw = ahead.get(where)
            first = int.from_bytes(raw, "little") if raw else read_u64(self.memory, where)
            if first >= KERNEL_SPACE:  # else: a pgid or sid whose own task has gone
                found[nr] = first - self.o.pid_links
        return found


def _is_leaf(entry: int) -> bool:
    """A struct pid: not NULL, not reserved, not a retry entry."""
    return entry & 3 == 0 and entry >= KERNEL_SPACE


def pids_in_table(memory: KernelMemory, task: int, btf: Btf, pids: Iterable[int]) -> dict[int, int]:
    """pid_table() for `pids` only: each looked up, not the whole table walked."""
    offsets = layout(btf)
    ns = namespace_of(memory, task, offsets)
    return _Lookup(memory, offsets, read_u64(memory, ns + offsets.ns_idr)).tasks(pids)


__all__ = ["PidLayout", "layout", "namespace_of", "pid_table", "pids_in_table"]
