"""What the processes surface records: the views by name, what each saw in numbers, and the
pids they disagree on."""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.surfaces.base import RecordSet

NAME = "processes"

# The views, by the kernel path each one takes.
LISTING = "proc_listing"  # getdents64 of /proc: proc_pid_readdir(), thread-group leaders
TASKS = "task_listing"  # getdents64 of /proc/<pid>/task of each listed pid: every thread
KILL = "kill"  # kill(pid, 0): find_vpid(), no directory involved
STAT = "proc_stat"  # stat("/proc/<pid>"): proc_pid_lookup(), any task, listed or not
BPF_ITER = "bpf_task_iter"  # bpf_iter_task, as read() of its seq file returns it
ITER_MAP = "bpf_task_iter_map"  # the same walk, as the program copied it into a map
MEMORY = "kernel_memory"  # task_struct.tasks and each thread group, read from memory
PID_TABLE = "pid_table"  # the pid namespace's pid table (idr), read from memory
# the task list and its tasks' children lists, read from memory: a task on a children list only
# (a stray) is off the task list, yet its parent still holds it
MEMORY_LISTS = "kernel_lists"
LISTED = (LISTING, TASKS)
ITERATOR = (BPF_ITER, ITER_MAP)  # the two copies of one walk of the kernel's iterator
TEXT_VIEWS = (LISTING, TASKS, KILL, STAT, BPF_ITER, ITER_MAP)  # all but the memory walks


@dataclass(frozen=True)
class ProcessViews:
    """What each view saw, in numbers: says the views ran, which zero findings alone cannot."""

    pid_max: int | None
    listed: int  # pids in the /proc listing
    tasks: int  # tids in the task directories of the listed pids
    probed: int  # pids kill(2) was asked about; 0 where the probe could not run
    answered: int  # of those, the pids a task has
    iterated: int | None  # tasks the BPF iterator's read returned; None where it could not run
    suspects: int  # pids the first look disagreed on, before the re-checks
    rechecks: int  # looks taken after the first
    copied: int | None = None  # tasks in the iterator's map copy; None where it could not run
    in_memory: int | None = None  # tasks on the task list in memory; None where unread
    in_pid_table: int | None = None  # pids of tasks in the pid table; None where unread
    strays: int | None = None  # tasks on a children list and off the task list; None: unread


@dataclass(frozen=True)
class TaskWitness:
    """What was asked about a pid views show and neither the task list nor the pid table in
    memory has: the views read once more, the kernel's own lookups by pid, and the other
    kernel lists its task could still sit on (kernel/task_lists.py)."""

    shown_again: tuple[str, ...]  # the views that still show it, read once more
    pidfd: bool  # pidfd_open(pid) found it: the pid table, as the kernel looks it up
    proc_stat: bool  # /proc/<pid>/stat was read
    places: tuple[str, ...] = ()  # the other lists its task_struct sits on
    task: int | None = None  # that task_struct, where a list held it
    lists_read: bool = True  # False: memory failed, so `places` is no evidence either way


@dataclass(frozen=True)
class HiddenPid:
    """A pid the views disagree on in every look, with the views on each side."""

    pid: int
    tgid: int | None
    seen_by: tuple[str, ...]
    missing_from: tuple[str, ...]
    comm: str | None = None
    exe: str | None = None
    threads: tuple[int, ...] = ()  # tids of its threads that are hidden with it
    task: int | None = None  # its task_struct's address, where memory or the map has it
    witness: TaskWitness | None = None  # for a pid neither memory structure has

    @property
    def listed(self) -> bool:
        return any(view in self.seen_by for view in LISTED)

    @property
    def in_memory(self) -> bool:
        return MEMORY in self.seen_by or PID_TABLE in self.seen_by


@dataclass(frozen=True)
class ProcessRecords(RecordSet):
    """The processes surface's records: the views in numbers, and each pid they disagree on."""

    views: ProcessViews | None = None
    hidden: tuple[HiddenPid, ...] = ()
