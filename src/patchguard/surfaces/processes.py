"""Processes, seen up to five ways: the /proc listing (getdents64 of /proc), the task
directories of the listed processes (/proc/<pid>/task), kill(pid, 0) over every pid below
pid_max, stat of /proc/<pid>, and the kernel's own task list through a BPF task iterator.

PatchGuard's "process list corruption", in Linux terms. A rootkit hides a process by filtering
getdents64 on /proc (or hooking proc_pid_readdir / filldir64), so `ps` and every tool that
lists /proc miss it, while the kernel still finds it by pid: kill(pid, 0) and stat of
/proc/<pid> (proc_pid_lookup()) answer, and the task iterator walks it. A pid that one view
sees and another does not is a finding with its evidence.

Threads: /proc/<tid> of a non-leader thread answers stat and kill but is not listed in /proc;
it is listed in its process's /proc/<tgid>/task, so "listed" means either listing. Races:
processes start and exit between views, so a suspect is looked at again (a fresh listing, a
fresh probe, a fresh walk) and only a pid every look disagrees on is reported.

Pid namespaces: every view is of the pid namespace patchguard runs in (/proc, kill, and the
iterator, which walks the opener's namespace). A process in a sibling or child namespace
still has a pid in ours, so nothing escapes by moving namespace. Only the iterator's pid and
tgid are the init namespace's numbers (task->pid), so in a child namespace it is left out
with a gap rather than compared.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.kernel.bpf.iterators import TaskIterator
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.pids import answering, stat_answers
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.reading import Reading, one_of, records_of

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

NAME = "processes"
ROOTKIT = "T1014"

PROC = "/proc"
PID_MAX = "/proc/sys/kernel/pid_max"
SELF_STATUS = "/proc/self/status"

# The views, by the kernel path each one takes.
LISTING = "proc_listing"  # getdents64 of /proc: proc_pid_readdir(), thread-group leaders
TASKS = "task_listing"  # getdents64 of /proc/<pid>/task of each listed pid: every thread
KILL = "kill"  # kill(pid, 0): find_vpid(), no directory involved
STAT = "proc_stat"  # stat("/proc/<pid>"): proc_pid_lookup(), any task, listed or not
BPF_ITER = "bpf_task_iter"  # bpf_iter_task: find_ge_pid() over the pid namespace
LISTED = (LISTING, TASKS)

# Looks at the suspects after the first one; a pid must disagree in every look.
RECHECKS = 2

PROBE_WHAT = "pid-space probe (kill(2) and stat of /proc/<pid>)"
ITER_WHAT = "BPF task iterator"
NOT_LIVE_PROBE = "only the live kernel answers kill(2); a captured tree holds only its listing"
NOT_LIVE_BPF = "bpf(2) reads only the live kernel"
CHILD_PIDNS = (
    "patchguard runs in a child pid namespace: the iterator reports init-namespace pids, "
    "which cannot be compared with this namespace's /proc"
)

Views = Mapping[str, set[int]]
Verdict = tuple[tuple[str, ...], tuple[str, ...]]  # (seen_by, missing_from)


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessViews:
    """What each view saw, in numbers: says the views ran, which zero findings alone cannot."""

    pid_max: int | None
    listed: int  # pids in the /proc listing
    tasks: int  # tids in the task directories of the listed pids
    probed: int  # pids kill(2) was asked about; 0 where the probe could not run
    answered: int  # of those, the pids a task has
    iterated: int | None  # tasks the BPF iterator walked; None where it could not run
    suspects: int  # pids the first look disagreed on, before the re-checks
    rechecks: int  # looks taken after the first


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

    @property
    def listed(self) -> bool:
        return any(view in self.seen_by for view in LISTED)


# --- parsers: pure functions over text ----------------------------------------------------------


def parse_pid_max(text: str) -> int:
    """/proc/sys/kernel/pid_max: one number, the first pid the kernel never hands out."""
    value = text.strip()
    if not value.isdigit() or int(value) < 2:
        raise ValueError(f"not a pid_max: {value[:40]!r}")
    return int(value)


def pids_in_listing(names: Iterable[str]) -> set[int]:
    """The pid entries of a /proc (or /proc/<pid>/task) listing; "self", "sys"... are not."""
    return {int(name) for name in names if name.isdigit() and name[0] != "0"}


def status_field(text: str, name: str) -> str | None:
    """One `Name:\\tvalue` line of /proc/<pid>/status (proc_pid_status())."""
    found = re.search(rf"^{re.escape(name)}:\s*(.*)$", text, re.M)
    return found.group(1).strip() if found else None


def parse_tgid(status: str) -> int | None:
    value = status_field(status, "Tgid")
    return int(value) if value and value.isdigit() else None


def in_child_pid_namespace(status: str) -> bool:
    """NSpid lists the pid in every namespace from the reader's down to the task's own
    (since 4.1): more than one number means this task is not in the initial one."""
    value = status_field(status, "NSpid")
    return value is not None and len(value.split()) > 1


# --- cross-view: pure functions over the pid sets -----------------------------------------------


def disagreements(views: Views) -> dict[int, Verdict]:
    """Every pid some view sees and another lacks: pid -> (seen_by, missing_from).

    The two listings are one verdict: a thread is listed only in its process's task
    directory, and a listed pid is missing from neither.
    """
    listed = set().union(*(views.get(v, set()) for v in LISTED))
    found: dict[int, Verdict] = {}
    for pid in sorted(set().union(*views.values())):
        seen = tuple(v for v, pids in views.items() if pid in pids)
        missing = tuple(
            v
            for v, pids in views.items()
            if pid not in pids and (v not in LISTED or pid not in listed)
        )
        if missing:
            found[pid] = (seen, missing)
    return found


def settle(
    first: Views, look: Callable[[set[int]], Views], rounds: int = RECHECKS
) -> tuple[dict[int, Verdict], int]:
    """The suspects of the first look that every later look still disagrees on (with the
    last look's verdict), and how many looks were taken after the first."""
    suspects = disagreements(first)
    taken = 0
    while suspects and taken < rounds:
        taken += 1
        again = disagreements(look(set(suspects)))
        suspects = {pid: verdict for pid, verdict in again.items() if pid in suspects}
    return suspects, taken


def fold_threads(suspects: Iterable[int], tgid_of: Mapping[int, int]) -> dict[int, list[int]]:
    """Leader -> its suspect threads. A thread of a hidden process is part of that process's
    finding; a thread whose process is not a suspect stands alone."""
    pids = set(suspects)
    groups: dict[int, list[int]] = {}
    for pid in sorted(pids):
        tgid = tgid_of.get(pid, pid)
        leader = tgid if tgid in pids else pid
        groups.setdefault(leader, [])
        if leader != pid:
            groups[leader].append(pid)
    return groups


# --- collect ------------------------------------------------------------------------------------


@dataclass
class _Reading(Reading):
    views: dict[str, set[int]] = field(default_factory=dict)
    tgid_of: dict[int, int] = field(default_factory=dict)  # tid -> tgid, as far as known
    comm_of: dict[int, str] = field(default_factory=dict)  # from the iterator
    iterator: TaskIterator | None = None
    probed: int = 0

    def listing(self, path: str) -> set[int] | None:
        try:
            return pids_in_listing(os.listdir(self.kernel.path(path)))
        except OSError:
            return None


def _collect_listings(r: _Reading) -> bool:
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


def _collect_kill(r: _Reading, pid_max: int | None) -> None:
    if pid_max is None:
        r.gap(PROBE_WHAT, "pid_max is unknown, so the pid space has no known end")
        return
    # Pids at or above pid_max are never handed out; a listed one (pid_max lowered since)
    # is asked about on its own.
    extra = sorted(p for p in r.views[LISTING] | r.views[TASKS] if p >= pid_max)
    r.probed = pid_max - 1 + len(extra)
    r.views[KILL] = set(answering(range(1, pid_max))) | set(answering(extra))


def _open_iterator(r: _Reading) -> None:
    status = r.optional(SELF_STATUS)
    if status is not None and in_child_pid_namespace(status):
        r.gap(ITER_WHAT, CHILD_PIDNS)
        return
    try:
        r.iterator = TaskIterator.open(r.kernel.vmlinux_btf)
    except KernelAccessError as exc:
        r.gap(ITER_WHAT, str(exc))
        return
    # Our own program: the ebpf surface, collected beside this one, leaves it out.
    r.kernel.own_prog_ids.add(r.iterator.prog_id)


def _walk(r: _Reading) -> set[int] | None:
    """One walk of the task list; None (with a gap) when it fails, and the view is dropped."""
    if r.iterator is None:
        return None
    try:
        tasks = r.iterator.tasks()
    except KernelAccessError as exc:
        r.gap(ITER_WHAT, str(exc))
        r.iterator.close()
        r.iterator = None
        return None
    for task in tasks:
        r.tgid_of[task.pid] = task.tgid
        r.comm_of[task.pid] = task.comm
    return {task.pid for task in tasks}


def _tgid(r: _Reading, pid: int) -> int | None:
    status = r.optional(f"{PROC}/{pid}/status")
    tgid = parse_tgid(status) if status is not None else None
    if tgid is not None:
        r.tgid_of[pid] = tgid
    return tgid if tgid is not None else r.tgid_of.get(pid)


def _in_task_dir(r: _Reading, pid: int, listed: set[int]) -> bool:
    tgid = _tgid(r, pid)
    return tgid in listed and pid in (r.listing(f"{PROC}/{tgid}/task") or set())


def _look(r: _Reading, suspects: set[int]) -> Views:
    """Every view again, for the suspects only."""
    listed = r.listing(PROC)
    if listed is None:
        return {}  # no listing to compare with: nothing can be confirmed
    views = {
        LISTING: listed & suspects,
        TASKS: {p for p in suspects if _in_task_dir(r, p, listed)},
        KILL: set(answering(sorted(suspects))),
        STAT: {p for p in suspects if stat_answers(r.kernel.path(PROC), p)},
    }
    if BPF_ITER in r.views and (walked := _walk(r)) is not None:
        views[BPF_ITER] = walked & suspects
    return views


def _exe(r: _Reading, pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(r.kernel.path(f"{PROC}/{pid}/exe"))
    return None  # kernel threads have none; a hidden lookup refuses it


def _hidden(r: _Reading, leader: int, threads: list[int], verdict: Verdict) -> HiddenPid:
    comm = r.optional(f"{PROC}/{leader}/comm")
    return HiddenPid(
        pid=leader,
        tgid=r.tgid_of.get(leader),
        seen_by=verdict[0],
        missing_from=verdict[1],
        comm=comm.strip() if comm is not None else r.comm_of.get(leader),
        exe=_exe(r, leader),
        threads=tuple(threads),
    )


def _probe_live(r: _Reading, pid_max: int | None) -> tuple[int, int]:
    """The live views, the re-checks, and the records of what survived them."""
    _open_iterator(r)
    try:
        _collect_kill(r, pid_max)
        if (walked := _walk(r)) is not None:
            r.views[BPF_ITER] = walked
        first = {view: set(pids) for view, pids in r.views.items()}
        confirmed, rechecks = settle(first, lambda suspects: _look(r, suspects))
    finally:
        if r.iterator is not None:
            r.iterator.close()
    for pid in confirmed:
        _tgid(r, pid)
    for leader, threads in fold_threads(confirmed, r.tgid_of).items():
        r.records.append(_hidden(r, leader, threads, confirmed[leader]))
    return len(disagreements(first)), rechecks


def _summary(r: _Reading, pid_max: int | None, suspects: int, rechecks: int) -> ProcessViews:
    return ProcessViews(
        pid_max=pid_max,
        listed=len(r.views.get(LISTING, ())),
        tasks=len(r.views.get(TASKS, ())),
        probed=r.probed,
        answered=len(r.views.get(KILL, ())),
        iterated=len(r.views[BPF_ITER]) if BPF_ITER in r.views else None,
        suspects=suspects,
        rechecks=rechecks,
    )


def _counts(records: Sequence[object]) -> dict[str, int]:
    views = one_of(records, ProcessViews)
    hidden = records_of(records, HiddenPid)
    if views is None:
        return {}
    return {
        "processes": views.listed,
        "threads": views.tasks,
        "pids_probed": views.probed,
        "tasks_iterated": views.iterated or 0,
        "hidden": sum(not h.listed for h in hidden),
        "mismatched": sum(h.listed for h in hidden),
    }


class ProcessesSurface:
    name = NAME
    title = "Processes (cross-view)"

    def __init__(self, probe_below: int | None = None) -> None:
        # Only for benchmarks: probe pids below this instead of below the kernel's pid_max.
        self.probe_below = probe_below

    def collect(self, kernel: Kernel) -> SurfaceState[Sequence[object]]:
        r = _Reading(NAME, kernel)
        pid_max = r.parsed("pid_max (/proc/sys/kernel/pid_max)", PID_MAX, parse_pid_max)
        pid_max = self.probe_below or pid_max
        suspects = rechecks = 0
        if _collect_listings(r):
            if kernel.live:
                suspects, rechecks = _probe_live(r, pid_max)
            else:
                r.gap(PROBE_WHAT, NOT_LIVE_PROBE)
                r.gap(ITER_WHAT, NOT_LIVE_BPF)
            r.records.insert(0, _summary(r, pid_max, suspects, rechecks))
        return SurfaceState(NAME, tuple(r.records), _counts(r.records), tuple(r.gaps))

    def assess(self, state: SurfaceState[Sequence[object]]) -> list[Finding]:
        return assess_records(state.records)


# --- assess -------------------------------------------------------------------------------------


def _name(hidden: HiddenPid) -> str:
    return f" ({hidden.comm})" if hidden.comm else ""


def _evidence(hidden: HiddenPid) -> Evidence:
    return {
        "pid": hidden.pid,
        "tgid": hidden.tgid,
        "seen_by": list(hidden.seen_by),
        "missing_from": list(hidden.missing_from),
        "comm": hidden.comm,
        "exe": hidden.exe,
        "threads": list(hidden.threads),
    }


def _assess_hidden(hidden: HiddenPid) -> Finding:
    seen, missing = ", ".join(hidden.seen_by), ", ".join(hidden.missing_from)
    if not hidden.listed:
        return Finding(
            NAME,
            "hidden-process",
            Severity.HIGH,
            f"pid {hidden.pid}{_name(hidden)}",
            f"Process {hidden.pid}{_name(hidden)} is seen by {seen} but missing from {missing}: "
            "the kernel has it and the /proc listing hides it, which only a hook on getdents64 "
            "or the /proc readdir does.",
            Disposition.TAMPERING,
            ROOTKIT,
            _evidence(hidden),
        )
    return Finding(
        NAME,
        "process-view-mismatch",
        Severity.MEDIUM,
        f"pid {hidden.pid}{_name(hidden)}",
        f"Process {hidden.pid}{_name(hidden)} is listed in /proc and seen by {seen}, but "
        f"missing from {missing}: something filters that view of the kernel's tasks.",
        Disposition.SUSPICIOUS,
        ROOTKIT,
        _evidence(hidden),
    )


def assess_records(records: Sequence[object]) -> list[Finding]:
    return [_assess_hidden(h) for h in records_of(records, HiddenPid)]


__all__ = [
    "BPF_ITER",
    "KILL",
    "LISTING",
    "STAT",
    "TASKS",
    "HiddenPid",
    "ProcessViews",
    "ProcessesSurface",
    "assess_records",
    "disagreements",
    "fold_threads",
    "in_child_pid_namespace",
    "parse_pid_max",
    "parse_tgid",
    "pids_in_listing",
    "settle",
    "status_field",
]
