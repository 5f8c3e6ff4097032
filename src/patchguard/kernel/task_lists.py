"""The other kernel lists a task sits on, read from kernel memory: where a task that is off the
task list and out of the pid table (kernel/tasks.py, kernel/pid_table.py) can still be found.

Unlinking a task from `init_task.tasks` and taking its pid out of the pid table hides it from
every walk and every lookup by pid, but the kernel keeps it on lists of its own that the
rootkit must leave alone for the task to keep running and to exit cleanly:

- its parent's `children` list (linked through the child's `sibling`): wait(2) reaps it there;
- its cgroup's `css_set.tasks` (or `mg_tasks` while it migrates), linked through `cg_list`:
  the cgroup's accounting and cgroup.procs;
- its own `struct pid` (`task_struct.thread_pid`), whose `tasks[PIDTYPE_PID]` still points at
  it: a /proc/<pid> entry cached before holds that struct pid, not the table's.

The parents' children lists and the css_set lists are walked from the tasks the task-list
walk found; a node that is none of those tasks is a task off the list. Offsets come from
vmlinux BTF; every walk is bounded and every link checked as tasks.py checks its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64
from patchguard.kernel.tasks import MAX_TASKS, PID_LIMIT

WHAT = "task lists (kernel memory)"
CHILDREN = "children list of pid {parent}"
CGROUP = "cgroup task list (css_set {css_set:#x})"
STRUCT_PID = "its own struct pid"


@dataclass(frozen=True)
class ListsLayout:
    pid: int  # task_struct.pid
    children: int  # task_struct.children: the head of its children's `sibling` links
    sibling: int
    cgroups: int  # task_struct.cgroups: its css_set
    cg_list: int
    cset_heads: tuple[int, ...]  # css_set.tasks and css_set.mg_tasks
    thread_pid: int
    pid_tasks: int  # struct pid.tasks[PIDTYPE_PID]
    pid_links: int  # task_struct.pid_links[PIDTYPE_PID]


@dataclass(frozen=True)
class OffListTask:
    """A task found on other kernel lists but not among the tasks the task list gave."""

    pid: int
    task: int  # its task_struct
    places: tuple[str, ...]  # the lists it sits on, in CHILDREN/CGROUP/STRUCT_PID's words


def layout(btf: Btf) -> ListsLayout:
    """The offsets, found in BTF once per Btf."""
    return btf.derived(_layout)


def _layout(btf: Btf) -> ListsLayout:
    need = btf.required_offset

    return ListsLayout(
        pid=need("task_struct", "pid"),
        children=need("task_struct", "children"),
        sibling=need("task_struct", "sibling"),
        cgroups=need("task_struct", "cgroups"),
        cg_list=need("task_struct", "cg_list"),
        cset_heads=(need("css_set", "tasks"), need("css_set", "mg_tasks")),
        thread_pid=need("task_struct", "thread_pid"),
        pid_tasks=need("pid", "tasks"),
        pid_links=need("task_struct", "pid_links"),
    )


def ring(memory: KernelMemory, head: int, member: int, limit: int = MAX_TASKS) -> list[int]:
    """The containers on the circular list at `head`, linked through the list_head at
    `member` of each: next pointers followed from the head round to it, every link checked."""
    found: list[int] = []
    node = read_u64(memory, head)
    while node != head:
        if node < KERNEL_SPACE or len(found) >= limit:
            raise KernelAccessError(WHAT, f"implausible link {node:#x} after {len(found)}")
        found.append(node - member)
        node = read_u64(memory, node)
    return found


def _places(memory: KernelMemory, o: ListsLayout, known: Mapping[int, int]) -> dict[int, set[str]]:
    """task -> the children and cgroup lists it was found on, for every task on those lists
    of the known tasks (task_struct -> pid) that is not itself known."""
    places: dict[int, set[str]] = {}
    css_sets: set[int] = set()
    for task, pid in known.items():
        for child in ring(memory, task + o.children, o.sibling):
            places.setdefault(child, set()).add(CHILDREN.format(parent=pid))
        css_sets.add(read_u64(memory, task + o.cgroups))
    for css_set in sorted(c for c in css_sets if c >= KERNEL_SPACE):
        for head in o.cset_heads:
            for task in ring(memory, css_set + head, o.cg_list):
                places.setdefault(task, set()).add(CGROUP.format(css_set=css_set))
    return {task: found for task, found in places.items() if task not in known}


def _own_struct_pid(memory: KernelMemory, o: ListsLayout, task: int) -> bool:
    """The task's struct pid still names it as its task (what pid_task() answers)."""
    pid = read_u64(memory, task + o.thread_pid)
    return pid >= KERNEL_SPACE and read_u64(memory, pid + o.pid_tasks) == task + o.pid_links


def off_list_tasks(
    memory: KernelMemory, btf: Btf, known: Mapping[int, int], wanted: Iterable[int]
) -> dict[int, OffListTask]:
    """pid -> the task with that pid, for each pid of `wanted` whose task is on a children or
    cgroup list of the `known` tasks (task_struct -> pid, from the task-list walk) without
    being one of them; where its struct pid still names it, that is one of its places."""
    o, wanted = layout(btf), set(wanted)
    found: dict[int, OffListTask] = {}
    for task, places in _places(memory, o, known).items():
        pid = read_u32(memory, task + o.pid)
        if pid in wanted and pid < PID_LIMIT:
            own = (STRUCT_PID,) if _own_struct_pid(memory, o, task) else ()
            found[pid] = OffListTask(pid, task, (*sorted(places), *own))
    return found


__all__ = [
    "CGROUP",
    "CHILDREN",
    "STRUCT_PID",
    "ListsLayout",
    "OffListTask",
    "layout",
    "off_list_tasks",
    "ring",
]
