"""The pure half of the processes surface: parsers of /proc text and the cross-view logic on
pid sets (which pids the views disagree on, and which of those every later look still
disagrees on)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from patchguard.surfaces.processes.records import LISTED

Views = Mapping[str, set[int]]
Verdict = tuple[tuple[str, ...], tuple[str, ...]]  # (seen_by, missing_from)

# Looks at the suspects after the first one; a pid must disagree in every look.
RECHECKS = 2


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
