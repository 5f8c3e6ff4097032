"""Code patching against patchguard (syscall tables, the x64_sys_call dispatch, inline hooks in
core and module text), in the lab guest, run on the HOST: tests/lab/modules/build.py builds the
modules against the guest's headers (cached by source hash), one lab/run boot runs
guest_code_patching.py, which loads them, runs patchguard and records what it said; the
findings, their technique and their attribution (which module, which symbol) are asserted here.

- pg_syscall_hook: sys_call_table[62] (kill) and [217] (getdents64) replaced under a cleared
  CR0.WP, and the `jmp __x64_sys_kill` in x64_sys_call retargeted (the one that takes effect on
  Debian's 6.1, which dispatches through x64_sys_call).
- pg_inline_hook: a JMP over the first bytes of version_proc_show; then, loaded again, over
  ext4_seq_options_show in ext4's text (module text is in the baseline too).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from support.lab_guest import Results, module_builder, report, run_script
from support.lab_guest import findings as _findings

pytestmark = pytest.mark.lab

SYSCALL_HOOK, INLINE_HOOK = "pg_syscall_hook", "pg_inline_hook"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    modules = module_builder().MODULES
    return run_script(tmp_path_factory.mktemp("rootkits"), "guest_code_patching.py", modules)


def _symbol(guest: Results, name: str) -> tuple[int, str]:
    """(address, module) of a hook, from the guest's /proc/kallsyms while it was loaded."""
    return _symbol_in(guest, "module_symbols", name)


def _symbol_in(guest: Results, step: str, name: str) -> tuple[int, str]:
    address, module = guest[step][name].split()
    return int(address, 16), module


def _surface_counts(guest: Results, step: str) -> dict[str, int]:
    (surface,) = report(guest, step)["surfaces"]
    counts: dict[str, int] = surface["counts"]
    return counts


def _tampering(guest: Results, step: str) -> list[dict[str, Any]]:
    return _findings(guest, step, disposition="tampering")


def test_modules_load_and_the_hooks_take_effect(guest: Results) -> None:
    for step in ("insmod_syscall_hook", "insmod_inline_hook"):
        assert guest[step]["rc"] == 0, f"{step} {guest[step]['params']}: {guest[step]['stderr']}"
    counts, trigger = guest["syscall_hook_params"], guest["trigger"]
    # kill(2) goes through x64_sys_call, so the retargeted jump saw every call
    assert int(counts["x64_kill_calls"]) >= trigger["kills"]
    # ... and the replaced sys_call_table entries are never called on this kernel
    assert int(counts["table_kill_calls"]) == 0 and int(counts["table_getdents64_calls"]) == 0
    # the inline hook ran the original: /proc/version read the same through it
    assert int(guest["inline_hook_params"]["calls"]) >= trigger["reads"]
    assert set(trigger["version"]) == {guest["version_before"]}
    for line in guest["kernel_log"]:
        assert not re.search(r"BUG|Oops|WARNING|general protection", line), line


def test_baseline_is_clean_before_the_rootkits(guest: Results) -> None:
    assert guest["baseline"]["rc"] == 0, guest["baseline"]["stderr"]
    assert guest["check_before"]["rc"] == 0
    assert _tampering(guest, "check_before") == []


def test_check_names_the_retargeted_x64_sys_call_jump(guest: Results) -> None:
    hooks = [
        f
        for f in _findings(guest, "check_loaded", technique="syscall-hook")
        if f["subject"].startswith("x64_sys_call")
    ]
    assert len(hooks) == 1, hooks
    hook = hooks[0]
    assert hook["severity"] == "critical" and hook["disposition"] == "tampering"
    assert hook["subject"] == "x64_sys_call: syscall 62 (kill)"
    assert re.search(
        r"syscall 62 \(kill\) redirected from __x64_sys_kill to pg_x64_kill(\+0x0)? "
        rf"\[{SYSCALL_HOOK}\]$",
        hook["summary"],
    ), hook["summary"]
    assert hook["evidence"]["nr"] == 62 and hook["evidence"]["baseline_target"] == "__x64_sys_kill"
    assert int(hook["evidence"]["address"], 16) in range(
        int(guest["addresses"]["x64_kill_jmp"], 16), int(guest["addresses"]["x64_kill_jmp"], 16) + 5
    )


def test_scan_sees_syscall_62_dispatched_to_the_module(guest: Results) -> None:
    found = _findings(guest, "scan_loaded", surface="syscalls", subject="x64_sys_call: syscall 62")
    assert len(found) == 1, _findings(guest, "scan_loaded", surface="syscalls")
    hook = found[0]
    assert hook["technique"] == "syscall-hook" and hook["severity"] == "critical"
    assert hook["evidence"]["slot"] == guest["addresses"]["x64_kill_jmp"]
    assert int(hook["evidence"]["target"], 16) == _symbol(guest, "pg_x64_kill")[0]
    assert hook["evidence"]["target_name"].startswith("pg_x64_kill")


def test_scan_sees_the_replaced_sys_call_table_entries(guest: Results) -> None:
    table = int(guest["addresses"]["sys_call_table"], 16)
    for nr, hook in ((62, "pg_table_kill"), (217, "pg_table_getdents64")):
        subject = f"sys_call_table: syscall {nr}"
        found = _findings(guest, "scan_loaded", surface="syscalls", subject=subject)
        assert len(found) == 1, _findings(guest, "scan_loaded", surface="syscalls")
        evidence = found[0]["evidence"]
        assert found[0]["technique"] == "syscall-hook" and found[0]["severity"] == "critical"
        assert int(evidence["slot"], 16) == table + 8 * nr
        assert int(evidence["target"], 16) == _symbol(guest, hook)[0]
        assert evidence["target_name"].startswith(hook)


def test_scan_names_the_module_behind_each_syscall_hook(guest: Results) -> None:
    """Attribution: the target symbol names its module, as %pS does ("hook [module]")."""
    hooks = _findings(guest, "scan_loaded", surface="syscalls", technique="syscall-hook")
    assert len(hooks) == 3
    for hook in hooks:
        assert hook["evidence"]["target_name"].endswith(f" [{SYSCALL_HOOK}]"), hook


def test_check_sees_the_sys_call_table_entries_change(guest: Results) -> None:
    """sys_call_table lies in .rodata, which the baseline keeps: each replaced entry is said as
    the syscall it redirects, from the baseline's target to the module's."""
    table = int(guest["addresses"]["sys_call_table"], 16)
    changed = [
        f
        for f in _findings(guest, "check_loaded", technique="syscall-hook")
        if f["subject"].startswith("sys_call_table[")
    ]
    slots = sorted((int(f["evidence"]["address"], 16) - table) // 8 for f in changed)
    assert slots == [62, 217], changed
    for finding in changed:
        assert finding["severity"] == "critical" and finding["disposition"] == "tampering"
        assert finding["evidence"]["target"].endswith(f" [{SYSCALL_HOOK}]"), finding
    kill = next(f for f in changed if f["evidence"]["nr"] == 62)
    assert kill["evidence"]["baseline_target"] == "__x64_sys_kill+0x0"


def test_check_reports_the_inline_hook(guest: Results) -> None:
    hooks = _findings(guest, "check_loaded", technique="inline-hook")
    assert len(hooks) == 1, _tampering(guest, "check_loaded")
    hook, (show, module) = hooks[0], _symbol(guest, "pg_inline_show")
    assert hook["severity"] == "critical" and hook["disposition"] == "tampering"
    assert hook["subject"] in ("version_proc_show+0x0", "version_proc_show+0x4")  # +4: ENDBR64
    evidence = hook["evidence"]
    assert evidence["old"].startswith("0f 1f 44 00 00")  # the idle ftrace NOP5 ...
    assert evidence["new"].startswith("e9 ")  # ... under a jmp rel32
    assert evidence["disasm_new"].startswith(f"jmp {show:#x}")
    assert module == f"[{INLINE_HOOK}]"
    assert f"now jumps to pg_inline_show+0x0 [{INLINE_HOOK}]" in hook["summary"]


def test_check_reports_the_rootkits_and_nothing_else(guest: Results) -> None:
    techniques = sorted(f["technique"] for f in _tampering(guest, "check_loaded"))
    assert techniques == ["inline-hook", "syscall-hook", "syscall-hook", "syscall-hook"]
    assert guest["check_loaded"]["rc"] == 1  # critical findings: exit 1


def test_posture_shows_the_module_taints(guest: Results) -> None:
    assert guest["taint_before"] & (1 << 12 | 1 << 13) == 0
    assert guest["taint_loaded"] & (1 << 12 | 1 << 13) == (1 << 12 | 1 << 13)
    posture = {f["subject"]: f for f in _findings(guest, "scan_loaded", surface="posture")}
    assert posture["taint O"]["technique"] == "taint-out-of-tree-module"
    assert posture["taint E"]["technique"] == "taint-unsigned-module"
    assert posture["taint E"]["attack_id"] == "T1547.006"


def test_check_is_clean_after_rmmod(guest: Results) -> None:
    assert all(done["rc"] == 0 for done in guest["rmmod"]), guest["rmmod"]
    assert set(guest["trigger_after"]["version"]) == {guest["version_before"]}
    assert _tampering(guest, "check_after") == []
    assert guest["check_after"]["rc"] == 0


def test_check_reports_the_inline_hook_in_module_text(guest: Results) -> None:
    assert guest["insmod_module_hook"]["rc"] == 0, guest["insmod_module_hook"]["stderr"]
    reads = guest["module_hook_reads"]
    assert int(guest["module_hook_params"]["calls"]) >= len(reads)  # the hook ran ...
    assert set(reads) == {guest["module_file_after"]}  # ... and the original with it
    hooks = _tampering(guest, "check_module_hook")
    assert [f["technique"] for f in hooks] == ["inline-hook"], hooks
    hook, (show, _) = hooks[0], _symbol_in(guest, "module_hook_symbols", "pg_inline_show")
    assert hook["subject"] in (
        "ext4_seq_options_show+0x0 [ext4]",
        "ext4_seq_options_show+0x4 [ext4]",
    )
    assert hook["evidence"]["old"].startswith("0f 1f 44 00 00")
    assert hook["evidence"]["disasm_new"].startswith(f"jmp {show:#x}")
    assert f"now jumps to pg_inline_show+0x0 [{INLINE_HOOK}]" in hook["summary"]
    noted = _findings(guest, "check_module_hook", technique="module-not-in-baseline")
    assert [f["evidence"]["module"] for f in noted] == [INLINE_HOOK]
    counts = _surface_counts(guest, "check_module_hook")
    assert counts["modules"] >= 10 and counts["tampering"] == 1  # ext4, jbd2, virtio...


def test_module_text_checks_clean_after_rmmod(guest: Results) -> None:
    assert guest["rmmod_module_hook"]["rc"] == 0, guest["rmmod_module_hook"]["stderr"]
    assert _findings(guest, "check_module_after") == []
    assert guest["check_module_after"]["rc"] == 0
