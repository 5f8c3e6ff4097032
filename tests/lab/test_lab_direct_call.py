"""A direct ftrace call that is no BPF trampoline, in the lab guest (one boot of
direct_call_checks.py) on Debian's 6.1: pg_direct_call (tests/lab/modules/pg_direct_call.c)
puts a CALL to a stub of its own on vfs_read's ftrace site through ftrace's direct-call ops,
the ops BPF trampolines use. Under the exception the project ships for bpftrace's fentry
probes, and under the same manifest with the `owner = "call_direct_funcs"` declaration it used
to carry, the hook stays a finding that names what the call reaches: the module's stub, no BPF
trampoline; check does not explain the site."""

from __future__ import annotations

from typing import Any

import pytest
from support.lab_guest import Results, findings, records, run_script

pytestmark = pytest.mark.lab
MODULE = "pg_direct_call"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    found = run_script(
        tmp_path_factory.mktemp("direct-call"), "direct_call_checks.py", (MODULE,), kaslr=False
    )
    assert found["insmod"]["rc"] == 0, found["insmod"]
    return found


def _on_vfs_read(guest: Results, step: str) -> list[dict[str, Any]]:
    return [f for f in findings(guest, step) if f["evidence"].get("function") == "vfs_read"]


def test_the_module_really_calls_its_stub_through_the_direct_ops(guest: Results) -> None:
    line = guest["enabled_functions"]
    assert "vfs_read" in line and "call_direct_funcs" in line and "pg_direct_stub" in line, line


def test_the_direct_call_is_named_by_what_it_reaches(guest: Results) -> None:
    (call,) = [c for c in records(guest, "scan_shipped", "tracing", "DirectCall")]
    assert call["function"] == "vfs_read" and call["trampoline"] is None
    assert not call["known"] and call["programs"] == []
    assert call["target_name"].startswith("pg_direct_stub+0x0 [pg_direct_call]"), call


@pytest.mark.parametrize("step", ["scan_shipped", "scan_old_style"])
def test_no_fentry_exception_sanctions_it(guest: Results, step: str) -> None:
    """Neither the shipped manifest nor its old `owner = "call_direct_funcs"` covers it."""
    mine = _on_vfs_read(guest, step)
    assert {f["technique"] for f in mine} >= {
        "ftrace-direct-unaccounted",
        "ftrace-hook-sensitive-function",
    }, mine
    assert not [f for f in mine if f["disposition"] == "allowed"], mine
    (unaccounted,) = [f for f in mine if f["technique"] == "ftrace-direct-unaccounted"]
    assert (
        "pg_direct_stub+0x0 [pg_direct_call], which is no BPF trampoline"
        in (unaccounted["summary"])
    )
    assert unaccounted["evidence"]["direct_known"] is False


def test_the_old_declaration_says_why_it_no_longer_covers(guest: Results) -> None:
    said = [f["summary"] for f in findings(guest, "scan_old_style", technique="exception-mismatch")]
    assert any("vfs_read" in s and "no BPF trampoline" in s for s in said), said


def test_check_does_not_explain_the_site(guest: Results) -> None:
    mine = [f for f in findings(guest, "check") if "vfs_read" in f["subject"] + f["summary"]]
    assert mine and not [f for f in mine if f["disposition"] == "explained"], mine


def test_after_rmmod_nothing_is_left(guest: Results) -> None:
    assert guest["rmmod"]["rc"] == 0, guest["rmmod"]
    assert not _on_vfs_read(guest, "scan_after")
    assert not records(guest, "scan_after", "tracing", "DirectCall")
