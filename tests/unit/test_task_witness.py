"""The decision on a pid that views show and neither memory structure (the task list, the pid
table) has: unlinked (its task still on another kernel list), missed by the walk (the kernel's
own pidfd_open finds it), or invented by the views (nothing finds it, the views read twice).
The witnesses are built as collect() builds them; the other lists' offsets come from the
vmlinux BTF captured from the 6.18 "fc" kernel (the live test reads real tasks with them)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from patchguard.findings import Disposition, Finding, Severity
from patchguard.kernel.btf import Btf
from patchguard.kernel.task_lists import CGROUP, CHILDREN, STRUCT_PID, layout
from patchguard.surfaces.processes import (
    BPF_ITER,
    ITER_MAP,
    KILL,
    LISTING,
    MEMORY,
    PID_TABLE,
    STAT,
    TASKS,
    HiddenPid,
    TaskWitness,
    assess_hidden,
)
from patchguard.techniques import TECHNIQUES

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
PLACES = (CHILDREN.format(parent=812), CGROUP.format(css_set=0xFFFF888101234000), STRUCT_PID)
# A pid the cached /proc/<pid> entry alone still shows (what pg_hide_task unlink=1 leaves).
SEEN = (STAT,)
MISSING = (LISTING, TASKS, KILL, BPF_ITER, ITER_MAP, MEMORY, PID_TABLE)


def judged(witness: TaskWitness | None, comm: str = "sleep") -> Finding:
    return assess_hidden(HiddenPid(4242, None, SEEN, MISSING, comm, witness=witness))


def witness(
    places: tuple[str, ...] = (), pidfd: bool = False, proc_stat: bool = True
) -> TaskWitness:
    task = 0xFFFF8881D69D8000 if places else None
    return TaskWitness(SEEN, pidfd, proc_stat, places, task)


def test_a_task_still_on_other_lists_was_unlinked() -> None:
    found = judged(witness(PLACES))
    assert (found.technique, found.severity) == ("task-unlinked", Severity.CRITICAL)
    assert found.disposition is Disposition.TAMPERING
    assert (
        "its task (task_struct 0xffff8881d69d8000) still sits on the children list of pid 812, "
        "the cgroup task list (css_set 0xffff888101234000) and its own struct pid: it was "
        "unlinked from the task list and its pid taken out of the pid table to hide it"
    ) in found.summary
    assert "Shown by stat of /proc/<pid>; pidfd_open(2)" in found.summary
    assert "finds no such process; /proc/<pid>/stat can be read" in found.summary
    evidence = found.evidence
    assert evidence["still_on"] == list(PLACES) and evidence["pidfd_open"] is False
    assert evidence["task_struct"] == "0xffff8881d69d8000"
    assert evidence["shown_again"] == [STAT] and evidence["missing_from"] == list(MISSING)


def test_a_stray_no_lookup_shows_is_unlinked() -> None:
    """On its parent's children list only (the walk's strays): no text view needs to show it."""
    lists = ("kernel_lists",)
    missing = (LISTING, KILL, BPF_ITER, ITER_MAP, MEMORY, PID_TABLE, STAT)
    found = assess_hidden(
        HiddenPid(
            4242, None, lists, missing, "sleep", witness=TaskWitness(lists, False, False, PLACES)
        )
    )
    assert (found.technique, found.severity) == ("task-unlinked", Severity.CRITICAL)
    assert "Shown by the task list and children lists in kernel memory;" in found.summary
    assert "/proc/<pid>/stat cannot be read" in found.summary


def test_a_lookup_finding_what_memory_lacks_names_no_culprit() -> None:
    found = judged(witness(pidfd=True))
    assert (found.technique, found.severity) == ("memory-missed-task", Severity.MEDIUM)
    assert found.disposition is Disposition.SUSPICIOUS
    assert "the memory walk missed it" in found.summary and "no culprit" in found.summary
    assert "invent" not in found.summary and "unlinked" not in found.summary


def test_a_pid_nothing_finds_is_invented_by_the_views() -> None:
    found = judged(witness(proc_stat=False))
    assert (found.technique, found.severity) == ("process-invented", Severity.HIGH)
    assert found.disposition is Disposition.TAMPERING
    assert "shown by stat of /proc/<pid>, read twice" in found.summary
    assert "pidfd_open(2) finds no such process: those views invent it" in found.summary
    assert found.evidence["still_on"] == [] and found.evidence["task_struct"] is None


def test_an_invented_pid_whose_stat_answers_says_so() -> None:
    found = judged(witness(proc_stat=True))
    assert found.technique == "process-invented"
    assert "/proc/<pid>/stat answers too, through the same /proc" in found.summary


def test_lists_that_could_not_be_read_decide_nothing() -> None:
    """Memory failed on the other lists: neither unlinked nor invented is said."""
    unread = TaskWitness(SEEN, False, False, lists_read=False)
    for found in (judged(unread), judged(None)):
        assert (found.technique, found.severity) == ("task-off-task-list", Severity.HIGH)
        assert found.disposition is Disposition.SUSPICIOUS
        assert "is not known" in found.summary and "invent it:" not in found.summary


def test_a_pid_the_pid_table_still_has_needs_no_witness() -> None:
    """Off the task list only: the pid table is the witness, and the wording says so."""
    seen, missing = (LISTING, KILL, STAT, PID_TABLE), (MEMORY,)
    found = assess_hidden(HiddenPid(4242, 4242, seen, missing, "sleep"))
    assert found.technique == "task-off-task-list" and found.disposition is Disposition.TAMPERING
    assert "the pid table still has it" in found.summary and "invent" not in found.summary


def test_the_task_name_is_shown_escaped() -> None:
    found = judged(witness(PLACES), comm="\x1b[2Jok\n")
    assert "\x1b" not in found.summary and "\n" not in found.summary
    assert found.subject.startswith("pid 4242 (") and "\x1b" not in found.subject


def test_every_wording_is_catalogued() -> None:
    for technique in ("task-unlinked", "process-invented", "memory-missed-task"):
        assert technique in TECHNIQUES
    assert "or invented" not in TECHNIQUES["task-off-task-list"].meaning


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return Btf.parse(gzip.decompress(VMLINUX.read_bytes()))


def test_the_other_lists_offsets_from_btf(vmlinux: Btf) -> None:
    """Every member the other lists need is in 6.18's BTF, inside the structs it names."""
    o = layout(vmlinux)
    task_size = vmlinux.struct_size("task_struct")
    css_size = vmlinux.struct_size("css_set")
    assert task_size is not None and css_size is not None
    members = (o.pid, o.children, o.sibling, o.cgroups, o.cg_list, o.thread_pid, o.pid_links)
    assert all(0 < m < task_size for m in members)
    assert o.sibling == o.children + 16  # list_heads side by side, as sched.h declares them
    assert all(0 <= h < css_size for h in o.cset_heads) and len(set(o.cset_heads)) == 2
