"""Function hooks against patchguard (ftrace IPMODIFY, kprobes, module hiding) and the livepatch
module, in the lab guest, run on the HOST: build.py builds the modules (cached by source hash),
one lab/run boot runs guest_function_hooks.py, which loads them, runs patchguard and records
what it said; it is asserted here.

- pg_ftrace_hook: an ftrace_ops with IPMODIFY | SAVE_REGS on __x64_sys_getdents64 (the method
  of modern LKM rootkits), whose callback leaves the ip alone.
- pg_kprobe_hook: kprobes on commit_creds, at +0 (through ftrace) and on the instruction after
  the ftrace NOP (an INT3, or the JMP of an optimized kprobe).
- pg_livepatch: cmdline_proc_show replaced through klp_enable_patch (the legitimate side).
- pg_hide_module: takes itself off the module list and out of sysfs; loaded last (it cannot
  be unloaded).

Tests marked xfail(strict=True), if any, state what patchguard should say and does not yet (see
each reason); they turn into failures once it does, so the marker is then removed.
"""

from __future__ import annotations

import re

import pytest
from support.lab_guest import Results, module_builder, run_script
from support.lab_guest import findings as _findings
from support.lab_guest import one as _one
from support.lab_guest import report as _report

pytestmark = pytest.mark.lab

FTRACE_HOOK, KPROBE_HOOK, LIVEPATCH, HIDE = (
    "pg_ftrace_hook",
    "pg_kprobe_hook",
    "pg_livepatch",
    "pg_hide_module",
)
FTRACE_TARGET, KPROBE_TARGET, LIVEPATCH_TARGET = (
    "__x64_sys_getdents64",
    "commit_creds",
    "cmdline_proc_show",
)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    modules = module_builder().MODULES2
    results = tmp_path_factory.mktemp("rootkits2")
    return run_script(results, "guest_function_hooks.py", modules, kaslr=False)


def _address(guest: Results, name: str) -> int:
    return int(guest["addresses"][name], 16)


def _enabled(guest: Results, function: str) -> str:
    lines = [line for line in guest["views"]["enabled_functions"] if line.split()[0] == function]
    assert len(lines) == 1, guest["views"]["enabled_functions"]
    return lines[0]


def test_modules_load_and_the_hooks_run(guest: Results) -> None:
    assert guest["livepatch_supported"], "no /sys/kernel/livepatch: CONFIG_LIVEPATCH is off"
    loaded = guest["load"]
    for name in ("ftrace", "kprobe", "livepatch"):
        assert loaded[name]["rc"] == 0, f"{name} {loaded[name]['params']}: {loaded[name]['stderr']}"
    assert loaded["livepatch_transition"]["enabled"] == "1"
    views = guest["views"]
    assert int(views["ftrace_params"]["calls"]) > 0  # getdents64 went through the callback
    assert int(views["kprobe_params"]["entry_hits"]) > 0  # the exec committed its creds
    assert int(views["kprobe_params"]["body_hits"]) > 0
    assert guest["trigger"]["cmdline"] == "patchguard lab livepatch\n"  # the patched function
    assert views["livepatch"][f"{LIVEPATCH}/enabled"] == "1"
    assert views["livepatch"][f"{LIVEPATCH}/vmlinux/patched"] == "1"
    for line in guest["kernel_log"]:
        assert not re.search(r"BUG|Oops|WARNING|general protection", line), line


def test_baseline_is_clean_before_the_rootkits(guest: Results) -> None:
    assert guest["baseline"]["rc"] == 0, guest["baseline"]["stderr"]
    assert guest["check_before"]["rc"] == 0
    assert _findings(guest, "check_before", disposition="tampering") == []


# --- item 4: the ftrace IPMODIFY hook -----------------------------------------------------------


def test_enabled_functions_names_the_ftrace_hook_and_its_owner(guest: Results) -> None:
    line = _enabled(guest, FTRACE_TARGET)
    flags = line.split(")", 1)[1].split("\t")[0].split()
    assert "R" in flags and "I" in flags, line  # SAVE_REGS, IPMODIFY
    assert re.search(rf"->pg_ftrace_callback\+0x0/0x[0-9a-f]+ \[{FTRACE_HOOK}\]$", line), line


def test_scan_reports_the_ftrace_ipmodify_hook(guest: Results) -> None:
    hook = _one(guest, "scan_loaded", technique="ftrace-ipmodify", subject=FTRACE_TARGET)
    assert hook["surface"] == "tracing" and hook["severity"] == "high"
    assert hook["attack_id"] == "T1014" and hook["disposition"] == "suspicious"
    evidence = hook["evidence"]
    assert "I" in evidence["flags"] and "R" in evidence["flags"]
    assert len(evidence["owners"]) == 1
    assert re.fullmatch(
        rf"pg_ftrace_callback\+0x0/0x[0-9a-f]+ \[{FTRACE_HOOK}\]", evidence["owners"][0]
    )
    assert evidence["category"] == "directory-listing"
    assert f"({evidence['owners'][0]})" in hook["summary"]


def test_check_reports_the_ipmodify_module_hook_at_its_ftrace_site(guest: Results) -> None:
    """The changed site (NOP5 -> call of the ops' trampoline) is a legitimate ftrace state, but
    its owner is an IPMODIFY ops of an out-of-tree module that no policy declares: the method
    of ftrace rootkits, reported as tampering with the handler named."""
    site = _one(guest, "check_loaded", subject=f"{FTRACE_TARGET}+0x0")
    evidence = site["evidence"]
    assert site["technique"] == "ftrace-ipmodify-hook"
    assert site["disposition"] == "tampering" and site["severity"] == "critical"
    assert int(evidence["address"], 16) == _address(guest, FTRACE_TARGET)
    assert evidence["old"] == "0f 1f 44 00 00" and evidence["new"].startswith("e8 ")
    tramp = re.search(r"tramp: (0x[0-9a-f]+)", _enabled(guest, FTRACE_TARGET))
    assert tramp and evidence["disasm_new"] == f"call {tramp[1]}"
    assert re.search(rf"pg_ftrace_callback\+0x0/0x[0-9a-f]+ \[{FTRACE_HOOK}\]", evidence["handler"])


# --- item 5: the kprobes ------------------------------------------------------------------------


def test_kprobes_list_shows_both_probes(guest: Results) -> None:
    base = _address(guest, KPROBE_TARGET)
    offset = guest["addresses"]["kprobe_offset"]
    lines = {int(line.split()[0], 16): line for line in guest["views"]["kprobes"]}
    assert set(lines) == {base, base + offset}, guest["views"]["kprobes"]
    assert lines[base].endswith("[FTRACE]"), lines[base]
    assert f"{KPROBE_TARGET}+0x{offset:x}" in lines[base + offset]


def test_scan_reports_the_kprobes_on_commit_creds(guest: Results) -> None:
    base = _address(guest, KPROBE_TARGET)
    offset = guest["addresses"]["kprobe_offset"]
    found = _findings(guest, "scan_loaded", technique="kprobe-sensitive-function")
    assert sorted(f["subject"] for f in found) == [
        f"{KPROBE_TARGET}+0x0",
        f"{KPROBE_TARGET}+0x{offset:x}",
    ]
    for probe in found:
        evidence = probe["evidence"]
        assert probe["surface"] == "tracing" and probe["severity"] == "medium"
        assert probe["attack_id"] == "T1014"
        assert evidence["function"] == KPROBE_TARGET and evidence["category"] == "credentials"
        assert int(evidence["address"], 16) == base + evidence["offset"]
        # kprobes/list names the module of the PROBED address (none: commit_creds is core);
        # who registered it comes from the kernel's kprobe_table: the module's pre_handler
        assert evidence["module"] is None
        expected = "pg_kprobe_entry" if evidence["offset"] == 0 else "pg_kprobe_body"
        assert (evidence["handler"], evidence["handler_module"]) == (expected, KPROBE_HOOK)
        assert f"registered by {expected} [{KPROBE_HOOK}]" in probe["summary"]
    # the probe on the ftrace site is assessed with the kprobe, not as an ftrace hook as well
    assert _findings(guest, "scan_loaded", subject=KPROBE_TARGET) == []


def test_check_explains_the_kprobe_body_site(guest: Results) -> None:
    offset = guest["addresses"]["kprobe_offset"]
    probe = _one(guest, "check_loaded", technique="kprobe")
    assert probe["subject"] == f"{KPROBE_TARGET}+0x{offset:x}"
    assert probe["disposition"] == "explained"
    # the owner names who registered the kprobe: the test module's second probe
    owner = f"kprobe on {KPROBE_TARGET}+0x{offset:x} registered by pg_kprobe_body [pg_kprobe_hook]"
    assert probe["evidence"]["owner"] == owner
    new = probe["evidence"]["new"]
    if new.startswith("e9 "):  # optimized: a JMP to the optprobe trampoline
        assert "OPTIMIZED" in guest["views"]["kprobes"][0] + guest["views"]["kprobes"][1]
        assert "JMP to kprobe_optinsn_page" in probe["summary"]
        assert f"the detour of the optimized {owner}" in probe["summary"]
    else:
        assert new == "cc", probe


def test_check_explains_the_ftrace_site_of_the_ftrace_kprobe(guest: Results) -> None:
    sites = _findings(
        guest, "check_loaded", technique="ftrace-site", subject=f"{KPROBE_TARGET}+0x0"
    )
    assert len(sites) == 1, _findings(guest, "check_loaded", subject=f"{KPROBE_TARGET}+0x0")
    assert sites[0]["disposition"] == "explained"
    assert sites[0]["evidence"]["owner"] == (
        f"ftrace ops of the kprobe on {KPROBE_TARGET}+0x0 registered by pg_kprobe_entry "
        "[pg_kprobe_hook]"
    )


def test_check_does_not_call_the_ftrace_kprobe_tampering(guest: Results) -> None:
    wrong = _findings(
        guest, "check_loaded", subject=f"{KPROBE_TARGET}+0x0", disposition="tampering"
    )
    assert wrong == []


def test_check_accepts_ftrace_caller_calling_the_ops_list(guest: Results) -> None:
    wrong = [
        f
        for f in _findings(guest, "check_loaded", disposition="tampering")
        if f["subject"] in ("ftrace_call+0x0", "ftrace_regs_call+0x0")
    ]
    assert wrong == []


# --- the livepatch ------------------------------------------------------------------------------


def test_check_explains_the_livepatched_function(guest: Results) -> None:
    site = _one(guest, "check_loaded", subject=f"{LIVEPATCH_TARGET}+0x0")
    assert site["disposition"] == "explained", site  # never tampering
    assert site["technique"] == "ftrace-site"
    assert int(site["evidence"]["address"], 16) == _address(guest, LIVEPATCH_TARGET)
    assert site["evidence"]["owner"] == f"livepatch {LIVEPATCH} (vmlinux/{LIVEPATCH_TARGET},1)"
    assert re.search(r"\sI\s", _enabled(guest, LIVEPATCH_TARGET))  # klp ops are IPMODIFY


def test_scan_shows_the_livepatch_module(guest: Results) -> None:
    taint = _one(guest, "scan_loaded", technique="livepatch-module")
    assert taint["subject"] == f"module {LIVEPATCH}" and taint["severity"] == "info"


def test_scan_explains_the_livepatch_ipmodify_ops(guest: Results) -> None:
    found = _findings(guest, "scan_loaded", subject=LIVEPATCH_TARGET)
    assert found and all(f["disposition"] == "explained" for f in found), found
    assert found[0]["technique"] == "livepatch" and found[0]["severity"] == "info"


# --- after unloading ----------------------------------------------------------------------------


def test_everything_is_clean_after_unloading(guest: Results) -> None:
    unload = guest["unload"]
    for name in ("ftrace", "kprobe", "livepatch"):
        assert unload[name]["rc"] == 0, (name, unload[name])
    assert unload["left"] == [] and guest["kprobes_after"] == []
    assert guest["trigger_after"]["cmdline"] == guest["cmdline_before"]
    assert _findings(guest, "check_after", disposition="tampering") == []
    assert guest["check_after"]["rc"] == 0


# --- item 3: the self-hiding module -------------------------------------------------------------


def test_the_module_hides_itself(guest: Results) -> None:
    assert guest["insmod_hide"]["rc"] == 0, guest["insmod_hide"]
    views = guest["hidden_views"]
    assert not views["proc_modules"] and not views["sysfs"]
    # list_del also takes it out of /proc/kallsyms (its module symbols are listed by walking the
    # module list); vmallocinfo still names it as the caller of its own allocation (%pS finds
    # the module through the module address tree, which it did not touch).
    assert views["kallsyms"] == []
    assert len(views["vmalloc_callers"]) == 1
    assert re.search(
        rf" pg_hide_alloc\+0x[0-9a-f]+/0x[0-9a-f]+ \[{HIDE}\] ", views["vmalloc_callers"][0]
    )
    assert views["taint"] & (1 << 12 | 1 << 13) == (1 << 12 | 1 << 13)


def test_scan_finds_the_hidden_module(guest: Results) -> None:
    hidden = _one(guest, "scan_hidden", technique="hidden-module", subject=f"module {HIDE}")
    assert hidden["surface"] == "modules" and hidden["severity"] == "high"
    assert hidden["attack_id"] == "T1014" and hidden["disposition"] == "tampering"
    evidence = hidden["evidence"]
    assert evidence["module"] == HIDE
    assert evidence["seen_by"] == ["vmalloc_callers"]
    assert sorted(evidence["hidden_from"]) == ["kallsyms", "proc_modules", "sysfs"]
    assert guest["scan_hidden"]["rc"] == 1


def test_scan_finds_the_hidden_module_memory(guest: Results) -> None:
    memory = _one(guest, "scan_hidden", technique="hidden-module", subject="module memory")
    assert memory["severity"] == "high" and memory["disposition"] == "tampering"


def test_declared_hooks_are_allowed_by_their_exception(guest: Results) -> None:
    """Acme's manifest declares the callback, both kprobes and the livepatch exactly: with its
    exception in force every tracing finding is allowed (shown, naming the exception)."""
    request = guest["exception_ledger"]["request"]
    found = _report(guest, "scan_allowed")["findings"]
    techniques = {f["technique"] for f in found}
    assert {"ftrace-ipmodify", "kprobe-sensitive-function", "livepatch"} <= techniques
    for finding in found:
        assert finding["disposition"] == "allowed", finding
        assert finding["evidence"]["exception"] == request
