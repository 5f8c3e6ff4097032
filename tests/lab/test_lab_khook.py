"""khook-style hooks in the lab guest (tests/lab/modules/pg_khook.c): a 5-byte JMP over
version_proc_show's entry into a stub the rootkit allocated itself (module_alloc), which jumps
on to the hook. `check` (against the baseline) and `scan` (no baseline: the ftrace site holds
a JMP) both find it, both name the JMP's target "memory of no listed module" with the
allocation that holds it, and never the module whose memory lies below the stub."""

from __future__ import annotations

from typing import Any

import pytest
from support.lab_guest import Results, findings
from truth_guest import results

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return results(tmp_path_factory)


def _stub(guest: Results) -> int:
    return int(guest["khook_params"]["stub_address"])


def _hooks(guest: Results, step: str) -> list[dict[str, Any]]:
    return findings(guest, step, technique="inline-hook")


def test_the_hook_takes_effect(guest: Results) -> None:
    assert guest["insmod_khook"]["rc"] == 0, guest["insmod_khook"]["stderr"]
    assert int(guest["khook_params"]["calls"]) >= len(guest["khook_reads"])
    assert set(guest["khook_reads"]) == {guest["version_before"]}
    assert _stub(guest) > 0
    # the stub lies in an allocation of its own, which vmallocinfo lists (kptr_restrict=1)
    assert f"0x{_stub(guest):x}-" in guest["vmallocinfo"]


def _says_no_module(text: str, stub: int) -> None:
    assert "memory of no listed module" in text, text
    assert "[" not in text.split("memory of no listed module")[0], text  # no module named
    # the allocation that holds it; module_alloc names its own caller, the module's freed
    # init function, which vmallocinfo can only print as an address by now
    assert f"vmalloc {stub:#x}+0x" in text, text


def test_check_names_the_stub_as_memory_of_no_module(guest: Results) -> None:
    (hook,) = _hooks(guest, "check_khook")
    assert hook["severity"] == "critical" and hook["disposition"] == "tampering"
    assert hook["subject"] in ("version_proc_show+0x0", "version_proc_show+0x4")
    assert hook["evidence"]["disasm_new"].startswith(f"jmp {_stub(guest):#x}")
    _says_no_module(hook["summary"].split("now jumps to ")[1], _stub(guest))


def test_scan_finds_the_entry_jmp_without_a_baseline(guest: Results) -> None:
    (hook,) = _hooks(guest, "scan_khook")
    assert hook["severity"] == "critical" and hook["subject"] == "version_proc_show"
    assert int(hook["evidence"]["target"], 16) == _stub(guest)
    assert hook["evidence"]["target_module"] is None
    _says_no_module(hook["evidence"]["target_name"], _stub(guest))


def test_scan_and_check_name_the_target_the_same_way(guest: Results) -> None:
    (checked,) = _hooks(guest, "check_khook")
    (scanned,) = _hooks(guest, "scan_khook")
    assert scanned["evidence"]["target_name"] in checked["summary"]


def test_a_clean_kernel_has_no_ftrace_site_hooks_and_check_is_clean_after_rmmod(
    guest: Results,
) -> None:
    assert guest["rmmod_khook"]["rc"] == 0
    assert [
        f for f in findings(guest, "check_after_khook") if f["disposition"] == "tampering"
    ] == []
