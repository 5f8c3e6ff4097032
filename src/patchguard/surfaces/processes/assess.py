"""Findings from the pids the process views disagree on.

Kernel memory (the task list and the pid table, read through BTF) is the ground truth wherever it
was read: a task memory has and a view lacks is hidden by that view, and the finding names the views
that hide it and those that show it; a task the task list lacks is off it (unlinked, when the pid
table still has it). A task the task list has and the pid table lacks had its pid taken out of the
table, which hides it from every lookup by pid. The BPF iterator is judged by its two copies of one
walk: a task its program copied into the map but read() did not return is filtered out of read(); a
task in neither copy was never handed to the program, which is the kernel's own walk, not a filter
on what this process reads, and nothing hides such a task from ps.
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
    NAME,
    PID_TABLE,
    HiddenPid,
    ProcessRecords,
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
}


def _words(views: Sequence[str]) -> str:
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
    why = (
        "it was unlinked from the task list to hide it (the pid table still has it)"
        if PID_TABLE in hidden.seen_by
        else "it was unlinked from the task list to hide it, or those views invent it"
    )
    return finding(
        NAME,
        "task-off-task-list",
        _subject(hidden),
        f"Process {hidden.pid}{_name(hidden)} is seen by {_words(hidden.seen_by)} but is not "
        f"on the kernel's task list in memory (missing from {_words(hidden.missing_from)}): "
        f"{why}.",
        _evidence(hidden),
        disposition=Disposition.TAMPERING,
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
