"""A process hidden from every text view, and lines dropped from every process's writes, in the
lab guest (tests/lab/tasks_checks.py, modules pg_hide_task and pg_write_filter).

pg_hide_task takes the victim out of the /proc listings, stat, kill(2) and the BPF task
iterator's seq output; the task list in kernel memory (walked on 6.1 through
task_struct.thread_group), the pid table and the iterator's map copy still have it, so the
scan reports a critical hidden process that names the views that lie and those that tell
the truth.
pg_write_filter drops every line with a word from every write: a sealed report written
through it fails verify-report, which says it was altered."""

from __future__ import annotations

import pytest
from support.lab_guest import Results, findings, run_script

pytestmark = pytest.mark.lab

MODULES = ("pg_hide_task", "pg_write_filter")
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
    seen = ["bpf_task_iter_map", "kernel_memory", "pid_table"]
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


def test_a_report_written_through_the_filter_fails_verification(guest: Results) -> None:
    assert guest["insmod_filter"]["rc"] == 0, guest["insmod_filter"]["stderr"]
    filtered = guest["sealed_filtered"]
    assert filtered["word_lines"] == 0 and int(guest["filter_params"]["dropped"]) > 0
    verdict = filtered["verify"]
    assert verdict["rc"] == 1 and "altered" in verdict["stdout"], verdict
    intact = guest["sealed_intact"]
    assert intact["word_lines"] == 1, intact
    assert intact["verify"]["rc"] == 0 and "signed by host key" in intact["verify"]["stdout"]
