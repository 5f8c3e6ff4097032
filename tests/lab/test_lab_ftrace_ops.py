"""The ftrace ops list and BPF trampolines from kernel memory, in the lab guest (one boot of
ftrace_ops_checks.py): a real fentry trampoline recognised by its code with the program memory
says it runs, the same one bpf(2) gave; and pg_ops_filter (tests/lab/modules/pg_ops_filter.c),
whose ftrace ops traces two functions while every read of enabled_functions comes back empty:
the tracing surface names the view that lies and the ops it hides; pg_mod_hide, whose symbols
/proc/kallsyms no longer prints and whose /sys/module entry listings drop, told apart from
pg_sysfs_removed, whose kobject is gone from sysfs."""

from __future__ import annotations

from typing import Any

import pytest
from support.lab_guest import Results, findings, records, run_script

pytestmark = pytest.mark.lab
HIDDEN = {"__x64_sys_getdents64", "__x64_sys_kill"}
MODULES = ("pg_ops_filter", "pg_mod_hide", "pg_sysfs_removed")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return run_script(
        tmp_path_factory.mktemp("ftrace-ops"), "ftrace_ops_checks.py", MODULES, kaslr=False
    )


def _ops(guest: Results, step: str) -> list[dict[str, Any]]:
    return records(guest, step, "tracing", "OpsRecord")


def test_a_real_fentry_trampoline_is_recognised_with_its_program(guest: Results) -> None:
    fentry = guest["fentry"]
    tramp = fentry["trampoline"]
    assert tramp["recognised"], tramp
    assert tramp["ids"] == [fentry["prog_id"]] and tramp["names"] == ["pg_t_fentry"]
    assert tramp["after_original"] == [False]  # fentry: before the function
    assert tramp["attach_to"] == ["__do_sys_getppid"] and tramp["listed"] == [True]
    assert tramp["kallsyms"] and tramp["kallsyms"][0].startswith("bpf_trampoline_")


def test_a_listed_trampoline_is_no_finding(guest: Results) -> None:
    scan = guest["fentry"]["scan_text"]
    assert scan["rc"] in (0, 1), scan["stderr"]
    assert not [f for f in scan["report"]["findings"] if "trampoline" in f["technique"]]


def test_the_fentry_direct_call_is_an_ops_in_memory(guest: Results) -> None:
    ops = _ops(guest["fentry"], "scan")
    direct = [o for o in ops if "DIRECT" in o["flags"] and "__do_sys_getppid" in o["names"]]
    assert direct, ops
    assert not findings(guest["fentry"], "scan", technique="filtered-view")
    assert not findings(guest["fentry"], "scan", technique="ftrace-direct-mismatch")


def test_enabled_functions_hiding_an_ops_is_a_view_that_lies(guest: Results) -> None:
    assert guest["insmod_ops_filter"]["rc"] == 0, guest["insmod_ops_filter"]["stderr"]
    # the file shows what is traced (the fentry function), until the filter empties it
    assert guest["fentry"]["enabled_lines"] > 0 and guest["enabled_filtered"] == 0
    assert int(guest["ops_filter_params"]["cut"]) > 0
    (ours,) = [o for o in _ops(guest, "scan_filtered") if o["handler"] == "pg_ops_callback"]
    assert ours["handler_module"] == "pg_ops_filter" and set(ours["names"]) == HIDDEN
    lying = {f["evidence"]["handler"]: f for f in findings(guest, "scan_filtered")}
    mine = lying["pg_ops_callback"]
    assert mine["severity"] == "critical" and mine["subject"] == "enabled_functions"
    assert set(mine["evidence"]["hidden_functions"]) == HIDDEN
    assert mine["summary"].startswith(
        "enabled_functions hides 2 functions that ftrace ops pg_ops_callback traces"
    )
    # the filter's own kretprobe runs through an ftrace ops too, hidden the same way
    assert lying["kprobe_ftrace_handler"]["evidence"]["hidden_functions"] == ["seq_read_iter"]


def test_after_rmmod_the_views_agree(guest: Results) -> None:
    assert guest["rmmod_ops_filter"]["rc"] == 0, guest["rmmod_ops_filter"]["stderr"]
    assert guest["enabled_after"] == guest["enabled_before"]
    assert not [o for o in _ops(guest, "scan_after") if o["handler"] == "pg_ops_callback"]
    assert not findings(guest, "scan_after", technique="filtered-view")


def _mine(guest: Results, step: str, module: str) -> list[dict[str, Any]]:
    return [f for f in findings(guest, step) if f["evidence"].get("module") == module]


def test_a_module_hidden_from_kallsyms_and_sysfs_listings(guest: Results) -> None:
    assert guest["insmod_mod_hide"]["rc"] == 0, guest["insmod_mod_hide"]["stderr"]
    views = guest["mod_hide_views"]
    assert not views["sys_module_lists"] and views["sys_module_opens"], views
    assert views["proc_modules"], views
    params = guest["mod_hide_params"]
    assert int(params["dropped"]) > 0 and int(params["blanked"]) > 0, params
    said = {f["subject"]: f for f in _mine(guest, "scan_mod_hide", "pg_mod_hide")}
    kallsyms, sysfs = said["/proc/kallsyms"], said["/sys/module"]
    assert kallsyms["technique"] == sysfs["technique"] == "filtered-view"
    assert kallsyms["evidence"]["symbols_shown"] == 0 < kallsyms["evidence"]["symbols_in_memory"]
    assert "pg_filldir" in kallsyms["evidence"]["hidden_symbols"]
    # what /proc/kallsyms still prints of it is not from its symbol table: ftrace keeps the
    # names of a module's freed init functions (ftrace_mod_map), pg_mod_hide_init here
    assert not set(views["kallsyms_names"]) & set(kallsyms["evidence"]["hidden_symbols"])
    assert set(views["kallsyms_names"]) <= {"pg_mod_hide_init"}, views
    assert sysfs["evidence"] == {
        "module": "pg_mod_hide",
        "opens_by_name": True,
        "kobject_in_kset": True,
        "second_look": True,
    }
    assert kallsyms["evidence"]["second_look"] is True
    assert "on a second look too" in sysfs["summary"]
    assert "getdents" in sysfs["summary"] and "not removed" in sysfs["summary"]


def test_a_removed_kobject_is_said_removed(guest: Results) -> None:
    assert guest["insmod_sysfs_removed"]["rc"] == 0, guest["insmod_sysfs_removed"]["stderr"]
    views = guest["sysfs_removed_views"]
    assert not views["sys_module_lists"] and not views["sys_module_opens"], views
    (removed,) = [
        f
        for f in _mine(guest, "scan_sysfs_removed", "pg_sysfs_removed")
        if "opens_by_name" in f["evidence"]
    ]
    assert removed["technique"] == "hidden-module" and removed["subject"] == "pg_sysfs_removed"
    assert removed["evidence"] == {
        "module": "pg_sysfs_removed",
        "opens_by_name": False,
        "kobject_in_kset": False,
        "second_look": True,
    }
    assert "kobject_del" in removed["summary"] and "not filtered" in removed["summary"]
    assert not [f for f in findings(guest, "scan_sysfs_removed", technique="filtered-view")]
