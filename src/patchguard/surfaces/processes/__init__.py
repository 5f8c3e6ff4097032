"""Processes, seen eight ways and checked against kernel memory: the /proc listing (getdents64 of
/proc), the task directories of the listed processes (/proc/<pid>/task), kill(pid, 0) over every pid
below pid_max, stat of /proc/<pid>, the BPF task iterator as read() returns it and as its program
copied it into a map, and the kernel's task list and pid table read from memory through BTF.

PatchGuard's "process list corruption", in Linux terms. A rootkit hides a process by filtering
getdents64 on /proc (or hooking proc_pid_readdir / filldir64), so `ps` and every tool that lists
/proc miss it; the thorough ones also refuse its pid to kill(2) and stat, and filter what read()
returns from the BPF task iterator. Every one of those is a text view of the kernel; the task list
and the pid table in memory are not, so a task memory has and a view lacks is a finding that names
the views that lie. The iterator's map copy never passes through read(), so it tells a filter on
read() from a kernel walk that leaves a task out.

Threads: /proc/<tid> of a non-leader thread answers stat and kill but is not listed in /proc; it is
listed in its process's /proc/<tgid>/task, so "listed" means either listing. Races: processes start
and exit between views, so a suspect is looked at again (a fresh listing, a fresh probe, a fresh
iterator walk, its pid looked up in the pid table and its task looked at where memory had it)
and only a pid every look disagrees on is reported.

Off both: a pid a view shows that neither the task list nor the pid table has is unlinked from
both (DKOM) or invented by the view. A witness tells them apart: the other kernel lists its task
would still sit on (its parent's children list, its cgroup's task list, its own struct pid:
kernel/task_lists.py), the kernel's own pidfd_open, and every view read once more, last, so a
pid that exited between reads is dropped rather than called invented.

Modules: records (the views and what is recorded), views (parsers and the cross-view logic on pid
sets), collect (reading a Kernel), assess (findings), surface (ProcessesSurface).
"""

from __future__ import annotations

from patchguard.surfaces.processes.assess import VIEW_WORDS, assess_hidden, assess_records
from patchguard.surfaces.processes.collect import (
    CHILD_PIDNS,
    ITER_WHAT,
    MEMORY_WHAT,
    NOT_LIVE_BPF,
    NOT_LIVE_MEMORY,
    NOT_LIVE_PROBE,
    PID_TABLE_WHAT,
    PROBE_WHAT,
)
from patchguard.surfaces.processes.records import (
    BPF_ITER,
    ITER_MAP,
    ITERATOR,
    KILL,
    LISTED,
    LISTING,
    MEMORY,
    NAME,
    PID_TABLE,
    STAT,
    TASKS,
    TEXT_VIEWS,
    HiddenPid,
    ProcessRecords,
    ProcessViews,
    TaskWitness,
)
from patchguard.surfaces.processes.surface import ProcessesSurface
from patchguard.surfaces.processes.views import (
    RECHECKS,
    disagreements,
    fold_threads,
    in_child_pid_namespace,
    parse_pid_max,
    parse_tgid,
    pids_in_listing,
    settle,
    status_field,
)

__all__ = [
    "BPF_ITER",
    "CHILD_PIDNS",
    "ITERATOR",
    "ITER_MAP",
    "ITER_WHAT",
    "KILL",
    "LISTED",
    "LISTING",
    "MEMORY",
    "MEMORY_WHAT",
    "NAME",
    "NOT_LIVE_BPF",
    "NOT_LIVE_MEMORY",
    "NOT_LIVE_PROBE",
    "PID_TABLE",
    "PID_TABLE_WHAT",
    "PROBE_WHAT",
    "RECHECKS",
    "STAT",
    "TASKS",
    "TEXT_VIEWS",
    "VIEW_WORDS",
    "HiddenPid",
    "ProcessRecords",
    "ProcessViews",
    "ProcessesSurface",
    "TaskWitness",
    "assess_hidden",
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
