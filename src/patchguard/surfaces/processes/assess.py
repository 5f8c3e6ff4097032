"""Findings from the pids the process views disagree on.

Kernel memory (the task list and the pid table, read through BTF) is the ground truth wherever it
was read: a task memory has and a view lacks is hidden by that view, and the finding names the views
that hide it and those that show it; a task the task list lacks is off it (unlinked, when the pid
table still has it). A pid neither structure has is judged by a witness (TaskWitness): its task
found on a parent's children list, a cgroup's task list or its own struct pid was unlinked to hide
it; one the kernel's own pidfd_open finds was missed by the walk; one nothing finds, shown by the
views read once more, is invented by those views. A task the task list has and the pid table
lacks had its pid taken out of the table, which hides it from every lookup by pid. The BPF
iterator is judged by its two copies of one walk: a task its program copied into the map but
read() did not return is filtered out of read(); a task in neither copy was never handed to the
program, which is the kernel's own walk, not a filter on what this process reads, and nothing
hides such a task from ps.
"""

from __future__ import annotations

from collections.abc import Sequence

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.surfaces.base import finding
from patchguard.surfaces.processes.records import (
    BPF_ITER,
    ITER_MAP,
    ITERATOR,
    MEMORY,
    MEMORY_LISTS,
    NAME,
    PID_TABLE,
    HiddenPid,
    ProcessRecords,
    TaskWitness,
)
from patchguard.text import visible

# What each view is, in the words a finding uses.
VIEW_WORDS = {
    "proc_listing": "the /proc listing",
    "task_listing": "the /proc/<pid>/task listings",
    "kill": "kill(2)",
    "proc_stat": "stat of /proc/<pid>",
    BPF_ITER: "the BPF task iterator's read()",
    ITER_MAP: "the BPF task iterator's map copy",
    MEMORY: "the task list in kernel memory",
    PID_TABLE: "the pid table in kernel memory",
    MEMORY_LISTS: "the task list and children lists in kernel memory",
}


def _words(views: Sequence[str]) -> str:
    if not views:
        return "no view"
    words = [VIEW_WORDS.get(v, v) for v in views]
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def _name(hidden: HiddenPid) -> str:
    return f" ({visible(hidden.comm)})" if hidden.comm else ""


def _subject(hidden: HiddenPid) -> str:
    return f"pid {hidden.pid}{_name(hidden)}"


def _evidence(hidden: HiddenPid) -> Evidence:
    return {
        "pid": hidden.pid,
        "tgid": hidden.tgid,
        "seen_by": list(hidden.seen_by),
        "missing_from": list(hidden.missing_from),
        "comm": hidden.comm,
        "exe": hidden.exe,
        "threads": list(hidden.threads),
        "task_struct": f"{hidden.task:#x}" if hidden.task is not None else None,
    }


def _iterator_skips(hidden: HiddenPid) -> Finding:
    return finding(
        NAME,
        "iterator-skips-task",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is seen by {_words(hidden.seen_by)}, but the "
        "kernel's task iterator never handed it to its program: neither the iterator's read() "
        "nor its map copy has it. The kernel's own walk (task_seq_get_next) leaves it out, so "
        "BPF tools that use the task iterator miss it; nothing hides it from ps. A kernel "
        "built to keep a task from BPF tools does this, and so does a hook on that walk (the "
        "kernel-text and ftrace-site surfaces show such a hook).",
        _evidence(hidden),
    )


def _read_filtered(hidden: HiddenPid) -> Finding:
    return finding(
        NAME,
        "filtered-view",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} was handed to the BPF task iterator's program, "
        "which copied it into its map, but read() of the iterator did not return it: something "
        "filters what read() returns from seq files, as rootkits do to hide from BPF tools. "
        f"Seen by {_words(hidden.seen_by)}; missing from {_words(hidden.missing_from)}.",
        _evidence(hidden),
        disposition=Disposition.TAMPERING,
    )


def _hidden_from_memory(hidden: HiddenPid) -> Finding:
    return finding(
        NAME,
        "hidden-process",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is in kernel memory, but "
        f"{_words(hidden.missing_from)} hide it (shown by {_words(hidden.seen_by)}): those "
        "views lie about the kernel's tasks, which only a hook in the kernel does.",
        _evidence(hidden),
        severity=Severity.CRITICAL,
        disposition=Disposition.TAMPERING,
    )


def _off_task_list(hidden: HiddenPid) -> Finding:
    """Off the task list with its pid still in the table; or off both, judged by the witness."""
    if PID_TABLE not in hidden.seen_by:
        return _off_both(hidden)
    return finding(
        NAME,
        "task-off-task-list",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is seen by {_words(hidden.seen_by)} but is not "
        f"on the kernel's task list in memory (missing from {_words(hidden.missing_from)}): "
        "it was unlinked from the task list to hide it (the pid table still has it).",
        _evidence(hidden),
        disposition=Disposition.TAMPERING,
    )


def _off_both(hidden: HiddenPid) -> Finding:
    """Neither the task list nor the pid table has it: where else memory finds it says whether
    it was unlinked to hide it, missed by the walk, or invented by the views."""
    w = hidden.witness
    if w is None or not w.lists_read:
        return _unwitnessed(hidden)
    if w.places:
        return _unlinked(hidden, w)
    if w.pidfd:
        return _walk_missed(hidden, w)
    return _invented(hidden, w)


def _lookups(w: TaskWitness) -> str:
    """What the kernel's own lookups by pid said, in a finding's words."""
    pidfd = "finds it" if w.pidfd else "finds no such process"
    stat = "can" if w.proc_stat else "cannot"
    return (
        f"pidfd_open(2), the kernel's own lookup by pid, {pidfd}; /proc/<pid>/stat {stat} be read"
    )


def _witness_evidence(hidden: HiddenPid, w: TaskWitness) -> Evidence:
    return {
        **_evidence(hidden),
        "shown_again": list(w.shown_again),
        "pidfd_open": w.pidfd,
        "proc_stat_read": w.proc_stat,
        "still_on": list(w.places),
        "task_struct": f"{w.task:#x}" if w.task is not None else _evidence(hidden)["task_struct"],
    }


def _unlinked(hidden: HiddenPid, w: TaskWitness) -> Finding:
    task = f" (task_struct {w.task:#x})" if w.task is not None else ""
    return finding(
        NAME,
        "task-unlinked",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is on neither the task list nor the pid table in "
        f"kernel memory, yet its task{task} still sits on {_places(w.places)}: it was unlinked "
        "from the task list and its pid taken out of the pid table to hide it. "
        f"Shown by {_words(w.shown_again)}; {_lookups(w)}.",
        _witness_evidence(hidden, w),
        disposition=Disposition.TAMPERING,
    )


def _places(places: tuple[str, ...]) -> str:
    return _words([p if p.startswith("its ") else f"the {p}" for p in places])


def _walk_missed(hidden: HiddenPid, w: TaskWitness) -> Finding:
    return finding(
        NAME,
        "memory-missed-task",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is shown by {_words(w.shown_again)} and "
        "pidfd_open(2), the kernel's own lookup by pid, finds it, but neither the task list "
        "nor the pid table read from kernel memory has it, and no children or cgroup list "
        "read holds it: the memory walk missed it, so memory is no witness for this pid and "
        "no culprit is named.",
        _witness_evidence(hidden, w),
    )


def _invented(hidden: HiddenPid, w: TaskWitness) -> Finding:
    also = " (/proc/<pid>/stat answers too, through the same /proc)" if w.proc_stat else ""
    return finding(
        NAME,
        "process-invented",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is shown by {_words(w.shown_again)}, read twice, "
        "but no kernel structure has it: not the task list, not the pid table, not the "
        "children or cgroup list of any task, and pidfd_open(2) finds no such process"
        f"{also}: those views invent it.",
        _witness_evidence(hidden, w),
        disposition=Disposition.TAMPERING,
    )


def _unwitnessed(hidden: HiddenPid) -> Finding:
    return finding(
        NAME,
        "task-off-task-list",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is seen by {_words(hidden.seen_by)} but neither "
        f"the task list nor the pid table in memory has it (missing from "
        f"{_words(hidden.missing_from)}), and the other kernel lists could not be read: "
        "whether it was unlinked to hide it or those views invent it is not known.",
        _evidence(hidden),
    )


def _without_memory(hidden: HiddenPid) -> Finding:
    """Where memory could not be read: the views judged against one another."""
    if not hidden.listed:
        return finding(
            NAME,
            "hidden-process",
            _subject(hidden),
            f"Process {hidden.pid}{_name(hidden)} is seen by {_words(hidden.seen_by)} but "
            f"missing from {_words(hidden.missing_from)}: the kernel has it and the /proc "
            "listing hides it, which only a hook on getdents64 or the /proc readdir does.",
            _evidence(hidden),
            disposition=Disposition.TAMPERING,
        )
    return finding(
        NAME,
        "process-view-mismatch",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is listed in /proc and seen by "
        f"{_words(hidden.seen_by)}, but missing from {_words(hidden.missing_from)}: something "
        "filters that view of the kernel's tasks.",
        _evidence(hidden),
    )


def assess_hidden(hidden: HiddenPid) -> Finding:
    missing = set(hidden.missing_from)
    if MEMORY in missing:
        return _off_task_list(hidden)
    if missing == set(ITERATOR):
        return _iterator_skips(hidden)
    if missing == {BPF_ITER} and ITER_MAP in hidden.seen_by:
        return _read_filtered(hidden)
    if hidden.in_memory:
        return _hidden_from_memory(hidden)
    return _without_memory(hidden)


def assess_records(records: ProcessRecords) -> list[Finding]:
    return [assess_hidden(h) for h in records.hidden]


__all__ = ["VIEW_WORDS", "assess_hidden", "assess_records"]
