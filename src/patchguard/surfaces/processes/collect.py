"""Reading the process views off a Kernel: the /proc listings, kill(2) over the pid space, stat of
/proc/<pid>, the BPF task iterator (its read() and its map copy), and the task list and the pid
table in kernel memory; then the re-checks of every pid they disagree on. A re-check reads the
kernel for the suspects alone: their pids looked up in the pid table, their tasks looked at where
memory's last look had them. The task list is walked whole again only when a view still shows a
pid that memory lacked or cannot find there, since only a whole walk shows a task off the list
(and the strays: children its tasks' children lists hold that the task list does not). A pid
that neither the task list nor the pid table has after the re-checks gets a witness
(witness_off_both): the other lists its task may sit on, pidfd_open, and every view read last.

Pid namespaces: /proc, kill and the iterator are of the pid namespace patchguard runs in. The
iterator's and memory's pid and tgid are the init namespace's numbers (task->pid), so in a child
namespace those views are left out with a gap rather than compared.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from patchguard.kernel.bpf.current_task import current_task
from patchguard.kernel.bpf.iterators import TaskIterator
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.pid_table import pid_table, pids_in_table
from patchguard.kernel.pids import answering, pidfd_finds, stat_answers, stat_file_reads
from patchguard.kernel.task_lists import off_list_tasks
from patchguard.kernel.tasks import ATTEMPTS, MemTask, tasks_in_place, walk_with_strays
from patchguard.surfaces.processes.records import (
    BPF_ITER,
    ITER_MAP,
    KILL,
    LISTING,
    MEMORY,
    MEMORY_LISTS,
    PID_TABLE,
    STAT,
    TASKS,
    TEXT_VIEWS,
    HiddenPid,
    ProcessViews,
    TaskWitness,
)
from patchguard.surfaces.processes.views import (
    Verdict,
    Views,
    disagreements,
    fold_threads,
    in_child_pid_namespace,
    parse_tgid,
    pids_in_listing,
    settle,
)
from patchguard.surfaces.reading import Reading

PROC = "/proc"
PID_MAX = "/proc/sys/kernel/pid_max"
SELF_STATUS = "/proc/self/status"

PROBE_WHAT = "pid-space probe (kill(2) and stat of /proc/<pid>)"
ITER_WHAT = "BPF task iterator"
MEMORY_WHAT = "task list in kernel memory"
PID_TABLE_WHAT = "pid table in kernel memory"
NOT_LIVE_PROBE = "only the live kernel answers kill(2); a captured tree holds only its listing"
NOT_LIVE_BPF = "bpf(2) reads only the live kernel"
NOT_LIVE_MEMORY = "a captured tree has no kernel memory"
CHILD_PIDNS = (
    "patchguard runs in a child pid namespace: the iterator and kernel memory give "
    "init-namespace pids, which cannot be compared with this namespace's /proc"
)


@dataclass
class ProcessReading(Reading):
    views: dict[str, set[int]] = field(default_factory=dict)
    tgid_of: dict[int, int] = field(default_factory=dict)  # tid -> tgid, as far as known
    comm_of: dict[int, str] = field(default_factory=dict)  # from memory or the iterator
    task_of: dict[int, int] = field(default_factory=dict)  # tid -> task_struct address
    iterator: TaskIterator | None = None
    start: int | None = None  # our own task_struct: where the memory walks begin
    on_list: dict[int, int] = field(default_factory=dict)  # pid -> task, memory's last look
    strays: dict[int, int] = field(default_factory=dict)  # pid -> task, on a children list only
    walked: dict[int, int] = field(default_factory=dict)  # task -> pid, the last whole walk
    pid_table_failed: bool = False
    probed: int = 0
    witnesses: dict[int, TaskWitness] = field(default_factory=dict)

    def listing(self, path: str) -> set[int] | None:
        try:
            return pids_in_listing(os.listdir(self.kernel.path(path)))
        except OSError:
            return None


def collect_listings(r: ProcessReading) -> bool:
    listed = r.listing(PROC)
    if listed is None:
        r.gap("process listing (/proc)", f"{PROC} cannot be listed under {r.kernel.root}")
        return False
    r.views[LISTING] = listed
    tasks: set[int] = set()
    for pid in listed:
        tids = r.listing(f"{PROC}/{pid}/task") or set()  # gone since the listing: no threads
        tasks |= tids
        r.tgid_of.update(dict.fromkeys(tids, pid))
    r.views[TASKS] = tasks
    return True


def _collect_kill(r: ProcessReading, pid_max: int | None) -> None:
    if pid_max is None:
        r.gap(PROBE_WHAT, "pid_max is unknown, so the pid space has no known end")
        return
    # Pids at or above pid_max are never handed out; a listed one (pid_max lowered since)
    # is asked about on its own.
    extra = sorted(p for p in r.views[LISTING] | r.views[TASKS] if p >= pid_max)
    r.probed = pid_max - 1 + len(extra)
    r.views[KILL] = set(answering(range(1, pid_max))) | set(answering(extra))


def _copy_entries(r: ProcessReading) -> int:
    """Room in the iterator's map copy: twice the tasks /proc lists, and some, so that tasks
    hidden from /proc or started meanwhile fit (a full map is a gap, never a finding)."""
    return 2 * len(r.views.get(TASKS, ())) + 4096


def _open_kernel_views(r: ProcessReading) -> None:
    """The iterator and the memory walk's start; both give init-namespace pids."""
    status = r.optional(SELF_STATUS)
    if status is not None and in_child_pid_namespace(status):
        r.gap(ITER_WHAT, CHILD_PIDNS)
        r.gap(MEMORY_WHAT, CHILD_PIDNS)
        r.gap(PID_TABLE_WHAT, CHILD_PIDNS)
        return
    try:
        r.iterator = TaskIterator.open(r.kernel.vmlinux_btf, _copy_entries(r))
    except KernelAccessError as exc:
        r.gap(ITER_WHAT, str(exc))
    else:
        # Our own objects: the ebpf surface, collected beside this one, leaves them out.
        r.kernel.own_prog_ids.add(r.iterator.prog_id)
        r.kernel.own_map_ids.add(r.iterator.map_id)
    try:
        r.start = current_task(r.kernel.own_prog_ids)
    except KernelAccessError as exc:
        r.gap(MEMORY_WHAT, f"no task to start from: {exc}")
        r.gap(PID_TABLE_WHAT, f"no task to start from: {exc}")


def _walk_iterator(r: ProcessReading) -> tuple[set[int], set[int]] | None:
    """One walk of the iterator: (pids read, pids copied); None (with a gap) when it fails."""
    if r.iterator is None:
        return None
    try:
        walk = r.iterator.walk()
    except KernelAccessError as exc:
        r.gap(ITER_WHAT, str(exc))
        r.iterator.close()
        r.iterator = None
        return None
    for task in walk.read:
        r.tgid_of[task.pid] = task.tgid
        r.comm_of.setdefault(task.pid, task.comm)
    for address, task in walk.copied:
        r.tgid_of[task.pid] = task.tgid
        r.task_of[task.pid] = address
        r.comm_of.setdefault(task.pid, task.comm)
    return {t.pid for t in walk.read}, {t.pid for _, t in walk.copied}


def _remember(
    r: ProcessReading, tasks: list[MemTask], strays: list[MemTask] | None = None
) -> tuple[set[int], set[int]]:
    """(pids on the task list, those and the strays); strays None: the last walk's stand."""
    for task in [*tasks, *(strays or ())]:
        r.tgid_of[task.pid] = task.tgid
        r.task_of[task.pid] = task.address
        r.comm_of[task.pid] = task.comm  # memory's name wins: no read() filtered it
    r.on_list = {task.pid: task.address for task in tasks if task.pid}
    if strays is not None:
        r.strays = {task.pid: task.address for task in strays if task.pid}
        r.walked = {task.address: task.pid for task in tasks}
    return set(r.on_list), set(r.on_list) | set(r.strays)  # pid 0, the idle task, has no /proc


def _walk_memory(
    r: ProcessReading, suspects: set[int] | None, seen: set[int]
) -> tuple[set[int], set[int]] | None:
    """The task list in memory, and it with the strays of its children lists, for the
    suspects only (None: every pid; `seen`: the suspects the look's other views show); None
    (with a gap) when it cannot be read."""
    if r.start is None:
        return None
    try:  # the reader and BTF are opened on first use: their failure is a gap too
        memory, btf = r.kernel.memory(), r.kernel.vmlinux_btf
        if suspects is not None and (in_place := _memory_in_place(r, suspects, seen)) is not None:
            return _remember(r, in_place)
        # where the pid table and the iterator put tasks: read ahead, neighbours together
        walked = walk_with_strays(memory, r.start, btf, near=set(r.task_of.values()))
        return _remember(r, *walked)
    except KernelAccessError as exc:
        r.gap(MEMORY_WHAT, str(exc))
        r.start = None
        return None


def _memory_in_place(r: ProcessReading, suspects: set[int], seen: set[int]) -> list[MemTask] | None:
    """The suspects' tasks looked at where memory's last look had them (tasks_in_place), or
    None when only a whole walk can tell: a view shows a pid that memory lacked or that is
    not where memory had it (it may be off the task list). A suspect no view shows any more
    has exited, and memory lacking it is all there is to know."""
    shown = suspects & seen
    if not shown <= r.on_list.keys() or suspects & r.strays.keys():
        return None  # only a whole walk finds strays
    known = {pid: r.on_list[pid] for pid in suspects if pid in r.on_list}
    found = tasks_in_place(r.kernel.memory(), r.kernel.vmlinux_btf, known)
    return list(found.values()) if shown <= found.keys() else None


def _walk_pid_table(r: ProcessReading, suspects: set[int] | None) -> set[int] | None:
    """The pids the pid table has a task for (the suspects looked up, or None: the whole table
    walked); None (with a gap) when it cannot be read."""
    if r.start is None or r.pid_table_failed:
        return None
    try:
        memory, btf = r.kernel.memory(), r.kernel.vmlinux_btf
        if suspects is None:
            table = pid_table(memory, r.start, btf)
        else:
            table = pids_in_table(memory, r.start, btf, suspects)
    except KernelAccessError as exc:
        r.gap(PID_TABLE_WHAT, str(exc))
        r.pid_table_failed = True
        return None
    for nr, task in table.items():
        r.task_of.setdefault(nr, task)
    return set(table)


def _tgid(r: ProcessReading, pid: int) -> int | None:
    status = r.optional(f"{PROC}/{pid}/status")
    tgid = parse_tgid(status) if status is not None else None
    if tgid is not None:
        r.tgid_of[pid] = tgid
    return tgid if tgid is not None else r.tgid_of.get(pid)


def _in_task_dirs(r: ProcessReading, suspects: set[int], listed: set[int]) -> set[int]:
    """The suspects listed in their process's task directory, each directory listed once.
    The tgid the views gave is tried first; /proc/<pid>/status is read only for a pid not
    found there (a thread that exec() made its group's leader has a new tgid)."""
    dirs: dict[int, set[int]] = {}

    def in_dir(pid: int, tgid: int | None) -> bool:
        if tgid is None or tgid not in listed:
            return False
        if tgid not in dirs:
            dirs[tgid] = r.listing(f"{PROC}/{tgid}/task") or set()
        return pid in dirs[tgid]

    return {p for p in suspects if in_dir(p, r.tgid_of.get(p)) or in_dir(p, _tgid(r, p))}


def _kernel_views(
    r: ProcessReading, suspects: set[int] | None, shown: Views | None = None
) -> dict[str, set[int]]:
    """The iterator's two copies, the pid table and memory, for the suspects only (None: every
    pid); `shown`: what the look's other views show of them."""
    views: dict[str, set[int]] = {}
    if (walked := _walk_iterator(r)) is not None:
        views[BPF_ITER], views[ITER_MAP] = walked
    if (in_table := _walk_pid_table(r, suspects)) is not None:  # before the walk: it may fail
        views[PID_TABLE] = in_table
    seen = set().union(*views.values(), *(shown or {}).values()) & (suspects or set())
    if (in_memory := _walk_memory(r, suspects, seen)) is not None:
        views[MEMORY], views[MEMORY_LISTS] = in_memory
    if suspects is None:
        return views
    return {view: pids & suspects for view, pids in views.items()}


def _look(r: ProcessReading, suspects: set[int]) -> Views:
    """Every view again, for the suspects only."""
    listed = r.listing(PROC)
    if listed is None:
        return {}  # no listing to compare with: nothing can be confirmed
    views = {
        LISTING: listed & suspects,
        TASKS: _in_task_dirs(r, suspects, listed),
        KILL: set(answering(sorted(suspects))),
        STAT: {p for p in suspects if stat_answers(r.kernel.path(PROC), p)},
    }
    again = _kernel_views(r, suspects, views)
    views.update({view: pids for view, pids in again.items() if view in r.views})
    return views


def _off_list(r: ProcessReading, pid: int) -> tuple[tuple[str, ...], int | None, bool]:
    """(the other lists the pid's task sits on, that task, whether the lists were read): the
    children and cgroup lists of the tasks memory's last whole walk found (init_task too). A
    walk that breaks (a child reaped under it) is taken again, ATTEMPTS in all."""
    if r.start is None or not r.walked:
        return (), None, False
    for _ in range(ATTEMPTS):
        try:
            found = off_list_tasks(r.kernel.memory(), r.kernel.vmlinux_btf, r.walked, {pid})
        except KernelAccessError:
            continue
        task = found.get(pid)
        return (task.places, task.task, True) if task is not None else ((), None, True)
    return (), None, False


def _witness(r: ProcessReading, pid: int) -> TaskWitness | None:
    """What says where a pid that neither memory structure has comes from: the other kernel
    lists and the kernel's own lookups first, then every view once more, last, so that a pid
    that exited meanwhile is shown by no view (None: not reported), and one memory has again
    was a race (None too); a view still showing it after all that is not timing."""
    places, task, lists_read = _off_list(r, pid)
    pidfd, proc_stat = pidfd_finds(pid), stat_file_reads(r.kernel.path(PROC), pid)
    again = _look(r, {pid})
    shown = tuple(view for view in (*TEXT_VIEWS, MEMORY_LISTS) if pid in again.get(view, ()))
    if not shown or pid in again.get(MEMORY, set()) | again.get(PID_TABLE, set()):
        return None
    return TaskWitness(shown, pidfd, proc_stat, places, task, lists_read)


def _needs_witness(r: ProcessReading, verdict: Verdict) -> bool:
    """Read from memory, the task list lacks it and the pid table does not show it."""
    seen, missing = verdict
    return MEMORY in r.views and MEMORY in missing and PID_TABLE not in seen


def witness_off_both(r: ProcessReading, confirmed: dict[int, Verdict]) -> dict[int, Verdict]:
    """`confirmed` less the pids a witness shows gone; each other's witness kept in r."""
    kept = dict(confirmed)
    for pid, verdict in confirmed.items():
        if not _needs_witness(r, verdict):
            continue
        if (witness := _witness(r, pid)) is None:
            del kept[pid]
        else:
            r.witnesses[pid] = witness
    return kept


def _exe(r: ProcessReading, pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(r.kernel.path(f"{PROC}/{pid}/exe"))
    return None  # kernel threads have none; a hidden lookup refuses it


def _hidden(r: ProcessReading, leader: int, threads: list[int], verdict: Verdict) -> HiddenPid:
    comm = r.optional(f"{PROC}/{leader}/comm")
    return HiddenPid(
        pid=leader,
        tgid=r.tgid_of.get(leader),
        seen_by=verdict[0],
        missing_from=verdict[1],
        # memory's name where it has one: /proc/<pid>/comm is a read() a rootkit can filter
        comm=r.comm_of.get(leader, comm.strip() if comm is not None else None),
        exe=_exe(r, leader),
        threads=tuple(threads),
        task=r.task_of.get(leader),
        witness=r.witnesses.get(leader),
    )


def probe_live(r: ProcessReading, pid_max: int | None) -> tuple[int, int]:
    """The live views, the re-checks, and the records of what survived them."""
    _open_kernel_views(r)
    try:
        _collect_kill(r, pid_max)
        r.views.update(_kernel_views(r, None))
        first = {view: set(pids) for view, pids in r.views.items()}
        confirmed, rechecks = settle(first, lambda suspects: _look(r, suspects))
        confirmed = witness_off_both(r, confirmed)
    finally:
        if r.iterator is not None:
            r.iterator.close()
            r.iterator = None  # a later look goes without it, not through closed fds
    for pid in confirmed:
        _tgid(r, pid)
    for leader, threads in fold_threads(confirmed, r.tgid_of).items():
        r.records.append(_hidden(r, leader, threads, confirmed[leader]))
    return len(disagreements(first)), rechecks


def _count(r: ProcessReading, view: str) -> int | None:
    return len(r.views[view]) if view in r.views else None


def summary(r: ProcessReading, pid_max: int | None, suspects: int, rechecks: int) -> ProcessViews:
    return ProcessViews(
        pid_max=pid_max,
        listed=len(r.views.get(LISTING, ())),
        tasks=len(r.views.get(TASKS, ())),
        probed=r.probed,
        answered=len(r.views.get(KILL, ())),
        iterated=_count(r, BPF_ITER),
        suspects=suspects,
        rechecks=rechecks,
        copied=_count(r, ITER_MAP),
        in_memory=_count(r, MEMORY),
        in_pid_table=_count(r, PID_TABLE),
        strays=len(r.strays) if MEMORY in r.views else None,
    )


__all__ = ["ProcessReading", "collect_listings", "probe_live", "summary", "witness_off_both"]
