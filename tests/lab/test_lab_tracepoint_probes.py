"""Tracepoint probes from kernel memory in the lab guest (one boot of
tracepoint_probes_checks.py) on Debian's 6.1: a trace event's probe agreeing with set_event, a
BPF raw tracepoint named with its program (6.1 passes the program, not a link, as data), and
pg_tp_probe (tests/lab/modules/pg_tp_probe.c): its own probe named with its module and not
flagged; its stub in memory of no module a critical finding that names the allocation and no
innocent module; its filter on set_event a view that lies; once it takes itself off the module
list, its own probe names the hidden module and the views that do not list it."""

from __future__ import annotations

from typing import Any

import pytest
from support.lab_guest import Results, findings, records, run_script

pytestmark = pytest.mark.lab
MODULE = "pg_tp_probe"
TECHNIQUE = "tracepoint-probe-unowned-code"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return run_script(
        tmp_path_factory.mktemp("tracepoint-probes"), "tracepoint_probes_checks.py", (MODULE,)
    )


def _probes(guest: Results, step: str, tracepoint: str) -> list[dict[str, Any]]:
    found = records(guest, step, "tracing", "TracepointProbe")
    return [p for p in found if p["tracepoint"] == tracepoint]


def test_a_trace_event_probe_agrees_with_set_event(guest: Results) -> None:
    done = guest["event_and_raw"]
    assert "sched:sched_kthread_stop" in done["set_event"]
    (event,) = _probes(done, "scan", "sched_kthread_stop")
    assert event["callback_kind"] == "trace-event" and event["event_shown"] is True
    assert event["callback"].startswith("trace_event_raw_event_sched_kthread_stop+0x0")
    assert not findings(done, "scan", technique="filtered-view")


def test_a_raw_tracepoint_is_named_with_its_program(guest: Results) -> None:
    done = guest["event_and_raw"]
    (raw,) = _probes(done, "scan", "sched_process_hang")
    assert raw["callback_kind"] == "bpf" and raw["prog_ids"] == [done["prog_id"]]
    assert raw["owner"].startswith(f"BPF prog {done['prog_id']} pg_t_rawtp tag ")
    assert raw["callback"] == "__bpf_trace_sched_process_hang+0x0"


def test_a_module_probe_is_named_with_its_module_and_not_flagged(guest: Results) -> None:
    assert guest["insmod_tp_probe"]["rc"] == 0, guest["insmod_tp_probe"]["stderr"]
    assert int(guest["tp_probe_params"]["owned_calls"]) > 0
    (owned,) = _probes(guest, "scan_tp_probe", "sched_process_fork")
    assert owned["callback_kind"] == "module" and owned["callback_module"] == MODULE
    assert owned["callback"] == f"pg_tp_owned_probe+0x0 [{MODULE}]"
    flagged = findings(guest, "scan_tp_probe", technique=TECHNIQUE)
    assert [f["subject"] for f in flagged] == ["tracepoint sched_process_exec"]


def test_a_probe_in_a_stub_of_no_module_is_critical(guest: Results) -> None:
    stub = int(guest["tp_probe_params"]["stub_address"])
    assert int(guest["tp_probe_params"]["hidden_calls"]) > 0
    (found,) = findings(guest, "scan_tp_probe", technique=TECHNIQUE)
    assert found["severity"] == "critical" and found["disposition"] == "tampering"
    callback = found["evidence"]["callback"]
    assert int(found["evidence"]["callback_address"], 16) == stub
    assert callback.startswith(f"{stub:#x} (memory of no listed module"), callback
    assert f"vmalloc {stub:#x}+0x" in callback, callback
    # no module is named as the owner: only the allocation's caller as vmallocinfo prints it
    # (pg_tp_probe's init function, or its address once init memory is freed)
    assert "[" not in callback.split(" by ")[0], callback
    assert found["evidence"]["hidden_module"] is None
    assert guest["scan_tp_probe"]["rc"] == 1


def test_set_event_hiding_an_event_memory_holds_is_a_view_that_lies(guest: Results) -> None:
    assert guest["set_event_filtered"] == "" and int(guest["tp_probe_params"]["cut"]) > 0
    (event,) = _probes(guest, "scan_tp_probe", "sched_kthread_stop")
    assert event["callback_kind"] == "trace-event" and event["event_shown"] is False
    (lie,) = findings(guest, "scan_tp_probe", technique="filtered-view", subject="set_event")
    assert lie["severity"] == "critical" and lie["disposition"] == "tampering"
    assert lie["evidence"]["tracepoint"] == "sched_kthread_stop"
    assert "set_event hides the trace event on tracepoint sched_kthread_stop" in lie["summary"]


def test_after_rmmod_no_probe_is_left(guest: Results) -> None:
    assert guest["rmmod_tp_probe"]["rc"] == 0, guest["rmmod_tp_probe"]["stderr"]
    assert not findings(guest, "scan_after", technique=TECHNIQUE)
    mine = [
        p
        for p in records(guest, "scan_after", "tracing", "TracepointProbe")
        if p["callback_module"] == MODULE
    ]
    assert mine == []


def test_a_probe_of_a_module_off_the_list_names_it_and_the_views_that_hide_it(
    guest: Results,
) -> None:
    assert guest["insmod_unlisted"]["rc"] == 0, guest["insmod_unlisted"]["stderr"]
    assert MODULE not in guest["proc_modules"]
    flagged = {f["subject"]: f for f in findings(guest, "scan_unlisted", technique=TECHNIQUE)}
    assert set(flagged) == {"tracepoint sched_process_fork", "tracepoint sched_process_exec"}
    owned = flagged["tracepoint sched_process_fork"]
    assert owned["evidence"]["hidden_module"] == MODULE
    assert owned["evidence"]["hidden_from"] == ["/proc/modules", "the kernel's module list"]
    assert (
        f"memory of module {MODULE}, which /proc/modules and the kernel's module list do not"
        in owned["summary"]
    )
    stub = flagged["tracepoint sched_process_exec"]
    assert stub["evidence"]["hidden_module"] is None  # the stub is still no module's


def test_the_kernel_log_is_clean(guest: Results) -> None:
    bad = ("BUG", "Oops", "WARNING", "general protection")
    assert not [line for line in guest["kernel_log"] if any(b in line for b in bad)]
