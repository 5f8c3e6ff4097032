"""A process hidden from every text view, and lines dropped from every process's writes, in the
lab guest (tests/lab/tasks_checks.py, modules pg_hide_task and pg_write_filter).

pg_hide_task takes the victim out of the /proc listings, stat, kill(2) and the BPF task
iterator's seq output; the task list in kernel memory (walked on 6.1 through
task_struct.thread_group), the pid table and the iterator's map copy still have it, so the
scan reports a critical hidden process that names the views that lie and those that tell
the truth.
With unlink=1 pg_hide_task takes the victim off the task list and out of the pid table (DKOM)
instead; a /proc/<pid> entry held open still shows it, and the scan names it unlinked, with the
lists it still sits on (its parent's children list, its cgroup's task list, its struct pid).
pg_hide_pid, a getdents64 filter alone, stays a view that lies: memory has the task.
With invent=1 pg_hide_task makes kill(2) answer for a pid no task has: the scan says the view
invents it (no list holds it, pidfd_open finds nothing, kill still answers when read again).
pg_write_filter drops every line with a word from every write: a sealed report written
through it fails verify-report, which says it was altered."""

from __future__ import annotations

import pytest
from support.lab_guest import Results, findings, run_script

pytestmark = pytest.mark.lab

MODULES = ("pg_hide_task", "pg_write_filter", "pg_hide_pid")
OFF_LIST = ("task-unlinked", "process-invented", "memory-missed-task", "task-off-task-list")
LYING = ["proc_listing", "task_listing", "kill", "bpf_task_iter", "proc_stat"]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return run_script(tmp_path_factory.mktemp("tasks"), "tasks_checks.py", MODULES, kaslr=False)


def about_victim(guest: Results, step: str) -> list[dict[str, object]]:
    return [f for f in findings(guest, step) if f["evidence"].get("pid") == guest["victim"]]


def test_nothing_hidden_before(guest: Results) -> None:
    assert about_victim(guest, "scan_before") == []
    assert findings(guest, "scan_before", technique="hidden-process") == []
    assert findings(guest, "scan_before", technique="task-off-task-list") == []


def test_the_module_hides_the_task_from_every_text_view(guest: Results) -> None:
    assert guest["insmod_hide"]["rc"] == 0, guest["insmod_hide"]["stderr"]
    assert guest["views_hidden"] == {"listed": False, "stat": False, "kill": False}
    assert guest["views_after"] == {"listed": True, "stat": True, "kill": True}
    params = guest["hide_params"]
    assert all(int(params[c]) > 0 for c in ("listed", "looked_up", "killed", "iterated")), params


def test_memory_finds_the_task_and_names_the_lying_views(guest: Results) -> None:
    (found,) = about_victim(guest, "scan_hidden")
    assert (found["technique"], found["severity"]) == ("hidden-process", "critical"), found
    evidence = found["evidence"]
    assert isinstance(evidence, dict)
    assert sorted(evidence["missing_from"]) == sorted(LYING), evidence
    seen = ["bpf_task_iter_map", "kernel_lists", "kernel_memory", "pid_table"]
    assert sorted(evidence["seen_by"]) == seen, evidence
    assert evidence["comm"] == "sleep" and str(evidence["task_struct"]).startswith("0xff")
    others = [
        f
        for f in findings(guest, "scan_hidden")
        if f["technique"] in ("hidden-process", "task-off-task-list", "filtered-view")
        and f not in about_victim(guest, "scan_hidden")
    ]
    assert others == []


def test_an_iterator_whose_output_alone_lies(guest: Results) -> None:
    """Only bpf_seq_write filtered: the map copy has what read() lacks, a filtered view."""
    assert guest["insmod_iter"]["rc"] == 0, guest["insmod_iter"]["stderr"]
    assert int(guest["iter_params"]["iterated"]) > 0 and int(guest["iter_params"]["killed"]) == 0
    (found,) = about_victim(guest, "scan_iter")
    assert (found["technique"], found["severity"]) == ("filtered-view", "critical"), found
    evidence = found["evidence"]
    assert isinstance(evidence, dict) and evidence["missing_from"] == ["bpf_task_iter"]
    assert {"bpf_task_iter_map", "kernel_memory", "proc_listing"} <= set(evidence["seen_by"])


def test_a_task_unlinked_from_both_structures_is_named_with_where_it_sits(
    guest: Results,
) -> None:
    assert guest["insmod_unlink"]["rc"] == 0, guest["insmod_unlink"]["stderr"]
    # the held /proc entry is the one view left; every lookup by pid fails
    assert guest["views_unlinked"] == {"listed": False, "stat": True, "kill": False}
    assert guest["views_relinked"] == {"listed": True, "stat": True, "kill": True}
    (found,) = about_victim(guest, "scan_unlinked")
    assert (found["technique"], found["severity"]) == ("task-unlinked", "critical"), found
    evidence = found["evidence"]
    assert isinstance(evidence, dict)
    # the held entry, and the task list walk's strays: its parent's children list holds it
    assert sorted(evidence["shown_again"]) == ["kernel_lists", "proc_stat"], evidence
    assert sorted(evidence["seen_by"]) == ["kernel_lists", "proc_stat"], evidence
    assert {"kernel_memory", "pid_table", "kill", "proc_listing"} <= set(evidence["missing_from"])
    assert evidence["pidfd_open"] is False and evidence["proc_stat_read"] is True
    places = evidence["still_on"]
    assert isinstance(places, list)
    assert f"children list of pid {guest['guest_pid']}" in places, places
    assert "its own struct pid" in places
    assert any(str(p).startswith("cgroup task list") for p in places)
    assert str(evidence["task_struct"]).startswith("0xff") and evidence["comm"] == "sleep"
    assert "unlinked from the task list and its pid taken out of the pid table" in str(
        found["summary"]
    )
    others = [f for f in findings(guest, "scan_unlinked") if f["technique"] in OFF_LIST]
    assert others == [found]


def test_a_getdents_filter_stays_a_view_that_lies(guest: Results) -> None:
    """pg_hide_pid filters listings only: memory has the task, nothing calls it unlinked."""
    assert guest["insmod_filter_pid"]["rc"] == 0, guest["insmod_filter_pid"]["stderr"]
    (found,) = about_victim(guest, "scan_filter_pid")
    assert (found["technique"], found["severity"]) == ("hidden-process", "critical"), found
    evidence = found["evidence"]
    assert isinstance(evidence, dict)
    assert {"kernel_memory", "pid_table", "kill"} <= set(evidence["seen_by"])
    assert [f for f in findings(guest, "scan_filter_pid") if f["technique"] in OFF_LIST] == []


def test_a_pid_only_a_lying_view_shows_is_invented(guest: Results) -> None:
    assert guest["insmod_invent"]["rc"] == 0, guest["insmod_invent"]["stderr"]
    assert int(guest["invent_params"]["killed"]) > 0
    mine = [
        f for f in findings(guest, "scan_invented") if f["evidence"].get("pid") == guest["invented"]
    ]
    (found,) = mine
    assert (found["technique"], found["severity"]) == ("process-invented", "high"), found
    assert found["disposition"] == "tampering"
    evidence = found["evidence"]
    assert evidence["seen_by"] == ["kill"] and evidence["shown_again"] == ["kill"], evidence
    assert evidence["pidfd_open"] is False and evidence["proc_stat_read"] is False
    assert evidence["still_on"] == [] and evidence["task_struct"] is None
    assert "those views invent it" in str(found["summary"])
    others = [f for f in findings(guest, "scan_invented") if f["technique"] in OFF_LIST]
    assert others == [found]


def test_a_report_written_through_the_filter_fails_verification(guest: Results) -> None:
    assert guest["insmod_filter"]["rc"] == 0, guest["insmod_filter"]["stderr"]
    filtered = guest["sealed_filtered"]
    assert filtered["word_lines"] == 0 and int(guest["filter_params"]["dropped"]) > 0
    verdict = filtered["verify"]
    assert verdict["rc"] == 1 and "altered" in verdict["stdout"], verdict
    intact = guest["sealed_intact"]
    assert intact["word_lines"] == 1, intact
    assert intact["verify"]["rc"] == 0 and "signed by host key" in intact["verify"]["stdout"]
