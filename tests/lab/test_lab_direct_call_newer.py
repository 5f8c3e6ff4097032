"""A direct ftrace call redirected behind ftrace's bookkeeping, in the lab guest on the newer
kernel (one KASLR boot of 6.12 running direct_call_newer_checks.py; 6.1 has no direct_call).

Since 6.6 a direct ops holds its own direct_call, and call_direct_funcs() jumps there whenever
another ftrace user shares the function's site. pg_direct_call (tests/lab/modules/
pg_direct_call.c) registers a direct call to its stub on vfs_read and a plain ftrace_ops beside
it (shared=1); with swap=1 it then rewrites the direct ops' direct_call to a second stub and
leaves ftrace's direct_functions hash on the first. patchguard must report exactly that one
redirect, naming the second stub and the recorded first one, and nothing while the two agree.
Last in the same boot, a hidden module (pg_nf_hook hide=1) on 6.12's hashed vmallocinfo."""

from __future__ import annotations

from typing import Any

import pytest
from support.lab_guest import Results, findings, one, records, run_script

pytestmark = pytest.mark.lab
MODULE = "pg_direct_call"
HIDDEN = "pg_nf_hook"  # loaded last with hide=1: a hidden module on 6.12
MISMATCH = "ftrace-direct-mismatch"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    found = run_script(
        tmp_path_factory.mktemp("direct-call-newer"),
        "direct_call_newer_checks.py",
        (MODULE, HIDDEN),
        kernel="newer",  # no vmlinux for PVH: KASLR stays on
    )
    for load in ("insmod_shared", "insmod_swapped"):
        assert found[load]["rc"] == 0, found[load]
    return found


def _address(guest: Results, load: str, symbol: str) -> str:
    where, module = str(guest[f"symbols_{load}"][symbol]).split()
    assert module == f"[{MODULE}]", (symbol, where, module)
    return where


def _vfs_read_line(guest: Results, load: str) -> str:
    lines = str(guest[f"enabled_{load}"]).splitlines()
    (line,) = [ln for ln in lines if ln.startswith("vfs_read ")]
    return line


@pytest.mark.parametrize("load", ["shared", "swapped"])
def test_the_site_goes_through_the_ops_list_and_names_no_stub(guest: Results, load: str) -> None:
    """Two ftrace users on vfs_read, one of them direct: the site calls ftrace's list function,
    which runs call_direct_funcs, and enabled_functions names neither stub, swapped or not."""
    line = _vfs_read_line(guest, load)
    assert "(2)" in line and "ftrace_ops_list_func" in line, line
    assert " D " in line and "pg_direct_stub" not in line, line


def test_the_calls_land_where_the_ops_direct_call_says(guest: Results) -> None:
    """The redirect is real: with direct_call as registered vfs_read's calls reach the first
    stub, once swapped they reach the second, though direct_functions still names the first."""
    shared, swapped = guest["calls_shared"], guest["calls_swapped"]
    assert shared["stub_calls"] > 0 and shared["stub2_calls"] == 0, shared
    assert swapped["stub2_calls"] > 0 and swapped["stub_calls"] == 0, swapped


def test_the_swapped_direct_call_is_one_mismatch_naming_the_second_stub(guest: Results) -> None:
    (mismatch,) = findings(guest, "scan_swapped", technique=MISMATCH)
    evidence: dict[str, Any] = mismatch["evidence"]
    assert evidence["function"] == "vfs_read", mismatch
    assert evidence["ops_direct_call_reaches"].startswith("pg_direct_stub2+0x0 "), evidence
    assert evidence["ops_direct_call_reaches"].endswith(f"[{MODULE}]"), evidence
    assert evidence["ops_direct_call"] == _address(guest, "swapped", "pg_direct_stub2"), evidence
    assert evidence["recorded_direct"] == _address(guest, "swapped", "pg_direct_stub"), evidence
    assert mismatch["disposition"] == "tampering", mismatch


def test_shared_without_the_swap_is_no_mismatch(guest: Results) -> None:
    """The same shared site with direct_call as registered: the scan sees the direct call (so
    it looked) and reports no redirect."""
    (call,) = [c for c in records(guest, "scan_shared", "tracing", "DirectCall")]
    assert call["function"] == "vfs_read", call
    assert call["target_name"].startswith(f"pg_direct_stub+0x0 [{MODULE}]"), call
    assert not findings(guest, "scan_shared", technique=MISMATCH)


def test_after_rmmod_nothing_is_left(guest: Results) -> None:
    for unload in ("rmmod_shared", "rmmod_swapped"):
        assert guest[unload]["rc"] == 0, guest[unload]
    assert not findings(guest, "scan_after", technique=MISMATCH)
    assert not records(guest, "scan_after", "tracing", "DirectCall")


def test_the_kernel_stayed_well(guest: Results) -> None:
    bad = ("BUG", "Oops", "WARNING", "general protection")
    assert not [ln for ln in guest["kernel_log"] if any(word in ln for word in bad)]


def test_a_hidden_module_is_memory_of_no_listed_module(guest: Results) -> None:
    """pg_nf_hook takes itself off the module list and out of sysfs. On 6.12 each module holds
    several loader areas (text, data, rodata, ro_after_init) and vmallocinfo hashes their
    addresses (kptr_restrict 0): the modules surface places the areas by the starts the listed
    modules' struct module records, or counts them against those, and names no module. Its
    netfilter hook is tampering; 6.12's own hook dump names the hook's function and module
    (the kernel's module tree still holds it: only the list and sysfs lost it)."""
    assert guest["insmod_nf_hidden"]["rc"] == 0, guest["insmod_nf_hidden"]
    memory = one(guest, "scan_nf_hidden", technique="hidden-module", subject="module memory")
    assert memory["severity"] == "high" and memory["disposition"] == "tampering", memory
    assert HIDDEN not in memory["summary"] + str(memory["evidence"])
    evidence = memory["evidence"]
    assert evidence["addresses_real"] is False and evidence["module_areas"], evidence
    assert evidence["unaccounted"] or evidence["loader_allocations"] > evidence["module_areas"]
    hook = one(guest, "scan_nf_hidden", technique="hidden-netfilter-hook")
    assert hook["disposition"] == "tampering" and hook["evidence"]["module"] == HIDDEN, hook
