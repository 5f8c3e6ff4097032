"""Explaining changed kernel text: patch-site tables, byte runs and verdicts.

The symbols are a real SymbolTable parsed from HAND-WRITTEN kallsyms lines. The core-kernel
addresses in them were copied from /proc/kallsyms of the 6.18.44-fc machine (no KASLR, text at
0xffffffff81000000); the module, BPF and trampoline lines below 0xffffffffc0... are made up. The
three "live" byte runs are the ones seen on that machine when a program was attached to the
syscalls/sys_enter_kill tracepoint; their destinations decode to __traceiter_sys_enter (before)
and perf_syscall_enter (after) in that kallsyms. All other bytes are hand-made.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from patchguard.integrity.explain import (
    ChangedRun,
    SiteIndex,
    Verdict,
    classify,
    diff_runs,
    explain,
)
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.x86 import insn as x86
from patchguard.x86.insn import (
    JumpEntry,
    StaticCallSite,
    decode_jump_table,
    decode_static_call_sites,
)

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff813327d0 T ftrace_caller
ffffffff813328c0 T ftrace_regs_caller
ffffffff81373440 T __pfx___x64_sys_kill
ffffffff81373450 T __x64_sys_kill
ffffffff814174d0 T __pfx___traceiter_sys_enter
ffffffff814174e0 T __traceiter_sys_enter
ffffffff81417be0 T __pfx_syscall_trace_enter
ffffffff81417bf0 T syscall_trace_enter
ffffffff81417dd0 T __pfx_syscall_exit_work
ffffffff81417de0 T syscall_exit_work
ffffffff814b2990 t __pfx_perf_syscall_enter
ffffffff814b29a0 t perf_syscall_enter
ffffffff816bab60 T __pfx_vfs_read
ffffffff816bab70 T vfs_read
ffffffff81249a40 W __pfx_calibration_delay_done
ffffffff81249a50 W calibration_delay_done
ffffffff822057f0 T __x86_return_thunk
ffffffff82206608 T __SCT__tp_func_sys_enter
ffffffff82206610 T __SCT__tp_func_sys_exit
ffffffff8220bb08 T _etext
ffffffff82a0c2e0 D __tracepoint_sys_enter
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0203000 t bpf_trampoline_6442450945\t[bpf]
ffffffffc0205000 t optinsn_slot\t[__builtin__kprobes]
ffffffffc0a00000 t hook_kill\t[evil]
"""
SYMS = SymbolTable.parse(KALLSYMS)

TRACE_ENTER = 0xFFFFFFFF81417BF0  # syscall_trace_enter
JUMP_SITE = TRACE_ENTER + 0xE2
JUMP_TARGET = TRACE_ENTER + 0x145
TP_KEY = 0xFFFFFFFF82A0C2E8  # the static_key inside __tracepoint_sys_enter
CALL_SITE = TRACE_ENTER + 0x17B  # the changed run starts one byte in, at +0x17c
SCT = 0xFFFFFFFF82206608  # __SCT__tp_func_sys_enter
SYS_KILL = 0xFFFFFFFF81373450  # __x64_sys_kill: no ENDBR here
VFS_READ = 0xFFFFFFFF816BAB70  # given an ENDBR64 in these tests: ftrace site at +4
PERF_SYSCALL_ENTER = 0xFFFFFFFF814B29A0
BPF_TRAMPOLINE = 0xFFFFFFFFC0203000
HOOK = 0xFFFFFFFFC0A00000

FILL = bytes.fromhex("4889e5415441")  # mov rbp,rsp; push r12; push r13...: plain code around


def index(**kw: object) -> SiteIndex:
    base: dict[str, object] = {
        "jump_entries": [JumpEntry(JUMP_SITE, JUMP_TARGET, TP_KEY, branch=False)],
        "static_call_sites": [StaticCallSite(CALL_SITE, 0xFFFFFFFF82A0C300, False, False)],
        "trampolines": [("__SCT__tp_func_sys_enter", SCT)],
        "ftrace_trampolines": [0xFFFFFFFF813327D0, 0xFFFFFFFF813328C0, BPF_TRAMPOLINE],
    }
    base.update(kw)
    return SiteIndex(**base)  # type: ignore[arg-type]


def one_run(
    address: int, old: bytes, new: bytes, before: bytes = FILL, after: bytes = FILL
) -> ChangedRun:
    """What diff_runs makes of `old` -> `new` at `address` inside unchanged code."""
    runs = diff_runs(before + old + after, before + new + after, address - len(before))
    assert len(runs) == 1
    return runs[0]


def judge(
    address: int,
    old: bytes,
    new: bytes,
    idx: SiteIndex | None = None,
    before: bytes = FILL,
    after: bytes = FILL,
) -> Verdict:
    return classify(one_run(address, old, new, before, after), idx or index(), SYMS)


def jmp32(at: int, dest: int, op: int = x86.JMP32) -> bytes:
    return bytes([op]) + struct.pack("<i", dest - (at + 5))


# --- the tables --------------------------------------------------------------------------------


def test_decode_jump_table_relative_fields_and_flags() -> None:
    start = 0xFFFFFFFF82880B10  # __start___jump_table: after the text, so code offsets are < 0
    raw = struct.pack(
        "<iiq", JUMP_SITE - start, JUMP_TARGET - (start + 4), (TP_KEY - (start + 8)) | 1
    )
    raw += struct.pack("<iiq", -0x100, -0x40, -0x1000 | 2)  # a key below the table, init bit
    first, second = decode_jump_table(raw, start)
    assert first == JumpEntry(JUMP_SITE, JUMP_TARGET, TP_KEY, branch=True, init=False)
    assert second.code == start + 16 - 0x100
    assert second.target == start + 20 - 0x40
    assert second.key == start + 24 - 0x1000
    assert (second.branch, second.init) == (False, True)
    with pytest.raises(ValueError):
        decode_jump_table(raw[:-1], start)


def test_decode_static_call_sites_relative_fields_and_flags() -> None:
    start = 0xFFFFFFFF8289D900  # __start_static_call_sites
    key = 0xFFFFFFFF82A0C300
    raw = struct.pack("<ii", CALL_SITE - start, key - (start + 4))
    raw += struct.pack("<ii", -0x20, (key - (start + 12)) | 1)  # tail call
    raw += struct.pack("<ii", -0x30, (key - (start + 20)) | 3)  # tail call in init text
    plain, tail, init = decode_static_call_sites(raw, start)
    assert plain == StaticCallSite(CALL_SITE, key, tail=False, init=False)
    assert tail == StaticCallSite(start + 8 - 0x20, key, tail=True, init=False)
    assert init == StaticCallSite(start + 16 - 0x30, key, tail=True, init=True)
    with pytest.raises(ValueError):
        decode_static_call_sites(raw + b"\0", start)


# --- runs ---------------------------------------------------------------------------------------


def test_diff_runs_merges_across_small_gaps_and_keeps_context() -> None:
    old = bytes(32)
    new = bytearray(old)
    new[4], new[8] = 1, 1  # 3 equal bytes apart: one run
    new[20] = 1  # 11 equal bytes after: a run of its own
    runs = diff_runs(old, bytes(new), 0x1000)
    assert [(r.address, r.old, r.new) for r in runs] == [
        (0x1004, bytes(5), b"\x01\0\0\0\x01"),
        (0x1014, b"\0", b"\x01"),
    ]
    assert runs[0].before == bytes(4)  # context stops at the buffer's start
    assert runs[0].after == bytes(11)  # ... and at the next run
    assert runs[1].before == bytes(11) and runs[1].after == bytes(11)
    assert len(diff_runs(old, bytes(new), 0x1000, merge_gap=2)) == 3
    assert diff_runs(old, old, 0x1000) == []
    with pytest.raises(ValueError):
        diff_runs(old, old[:-1], 0)


@pytest.mark.parametrize(("gap", "runs"), [(4, 1), (5, 2)])
def test_diff_runs_merge_gap_is_inclusive(gap: int, runs: int) -> None:
    old, new = bytes(16), bytearray(16)
    new[2] = new[3 + gap] = 0x90
    assert len(diff_runs(old, bytes(new), 0, merge_gap=4)) == runs


def test_diff_runs_across_page_chunks() -> None:
    old = bytes(8192)
    new = bytearray(old)
    new[4094] = new[4097] = 0xCC  # two equal bytes apart, either side of the 4096 boundary
    (run,) = diff_runs(old, bytes(new), 0)
    assert (run.address, run.new) == (4094, b"\xcc\0\0\xcc")


def test_site_index_finds_a_site_a_run_starts_inside() -> None:
    idx = index()
    assert [s.kind for s in idx.overlapping(CALL_SITE + 1, CALL_SITE + 5)] == ["static-call-site"]
    assert [s.kind for s in idx.overlapping(SCT + 4, SCT + 5)] == ["static-call-trampoline"]
    assert idx.overlapping(CALL_SITE + 5, CALL_SITE + 9) == []
    assert idx.overlapping(CALL_SITE - 4, CALL_SITE) == []


# --- the three runs seen live ------------------------------------------------------------------


def test_live_jump_label_nop2_to_jmp8_to_own_target() -> None:
    verdict = judge(JUMP_SITE, bytes.fromhex("6690"), bytes.fromhex("eb61"))
    assert verdict.explained
    assert verdict.technique == "jump-label"
    assert verdict.location == "syscall_trace_enter+0xe2"
    assert verdict.explanation == (
        "jump_label site: NOP2 -> JMP to its own target syscall_trace_enter+0x145, for "
        f"static key {TP_KEY:#x} (unlikely)"
    )
    assert verdict.disasm_old == "nop"
    assert verdict.disasm_new == f"jmp {JUMP_TARGET:#x}"


def test_live_static_call_site_retargeted_to_a_function_start() -> None:
    old, new = bytes.fromhex("e870f7ffff"), bytes.fromhex("e830ac0900")
    run = one_run(CALL_SITE, old, new)
    assert (run.address, run.old) == (TRACE_ENTER + 0x17C, old[1:])  # starts inside the site
    verdict = classify(run, index(), SYMS)
    assert verdict.explained, verdict.explanation
    assert verdict.technique == "static-call-site"
    assert (verdict.address, verdict.old, verdict.new) == (CALL_SITE, old, new)
    assert verdict.explanation == "static call site now calls the start of perf_syscall_enter"
    assert verdict.disasm_old == "call 0xffffffff814174e0"  # __traceiter_sys_enter
    assert verdict.disasm_new == f"call {PERF_SYSCALL_ENTER:#x}"


def test_live_static_call_trampoline_retargeted() -> None:
    sig = x86.TRAMP_UD
    run = one_run(SCT, bytes.fromhex("e9d30e21ff"), bytes.fromhex("e993c32aff"), b"", sig)
    assert (run.address, run.old, run.new) == (
        SCT + 1,
        bytes.fromhex("d30e21"),
        bytes.fromhex("93c32a"),
    )
    verdict = classify(run, index(), SYMS)
    assert verdict.explained
    assert verdict.technique == "static-call-trampoline"
    assert verdict.old == bytes.fromhex("e9d30e21ff")
    assert verdict.explanation == (
        "static call trampoline __SCT__tp_func_sys_enter now jumps to the start of "
        "perf_syscall_enter"
    )


def test_site_bytes_outside_the_run_come_from_kernel_read_without_context() -> None:
    run = ChangedRun(SCT + 1, bytes.fromhex("d30e21"), bytes.fromhex("93c32a"))
    live = {SCT: bytes.fromhex("e993c32aff")}
    assert not classify(run, index(), SYMS).explained  # the opcode is not visible
    verdict = classify(run, index(), SYMS, lambda a, n: live.get(a, b"")[:n] or None)
    assert verdict.explained
    assert verdict.old == bytes.fromhex("e9d30e21ff")


# --- jump labels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (x86.NOP2, bytes.fromhex("eb61")),
        (bytes.fromhex("eb61"), x86.NOP2),
        (x86.NOP5, jmp32(JUMP_SITE, JUMP_TARGET)),
        (jmp32(JUMP_SITE, JUMP_TARGET), x86.NOP5),
    ],
)
def test_jump_label_nop_and_jmp_to_own_target_are_explained(old: bytes, new: bytes) -> None:
    verdict = judge(JUMP_SITE, old, new)
    assert verdict.explained, verdict.explanation
    assert (verdict.old, verdict.new) == (old, new)


def test_jump_label_jmp_elsewhere_is_tampering() -> None:
    verdict = judge(JUMP_SITE, x86.NOP5, jmp32(JUMP_SITE, HOOK))
    assert not verdict.explained
    assert verdict.technique == "jump-label"
    assert "retargeted to hook_kill+0x0 [evil]" in verdict.explanation
    assert not judge(JUMP_SITE, x86.NOP2, bytes.fromhex("eb62")).explained  # one byte off


def test_jump_label_checks_the_key_state_when_readable() -> None:
    run = one_run(JUMP_SITE, x86.NOP2, bytes.fromhex("eb61"))

    def key(enabled: int) -> Callable[[int, int], bytes | None]:
        return lambda a, n: struct.pack("<i", enabled) if a == TP_KEY else None

    enabled = classify(run, index(), SYMS, key(1))
    assert enabled.explained and "enabled=1" in enabled.explanation
    disabled = classify(run, index(), SYMS, key(0))
    assert not disabled.explained and "calls for NOP" in disabled.explanation
    assert classify(run, index(), SYMS, key(-1)).explained  # mid-update: not judged
    likely = index(jump_entries=[JumpEntry(JUMP_SITE, JUMP_TARGET, TP_KEY, branch=True)])
    assert classify(run, likely, SYMS, key(0)).explained  # likely + disabled: JMP


# --- static calls ------------------------------------------------------------------------------


def test_static_call_into_the_middle_of_a_function_is_tampering() -> None:
    old = bytes.fromhex("e9d30e21ff")
    verdict = judge(SCT, old, jmp32(SCT, PERF_SYSCALL_ENTER + 0x10), before=b"", after=x86.TRAMP_UD)
    assert not verdict.explained
    assert verdict.technique == "static-call-trampoline"
    assert "jumps to perf_syscall_enter+0x10, not the start" in verdict.explanation
    site = judge(CALL_SITE, bytes.fromhex("e870f7ffff"), jmp32(CALL_SITE, HOOK + 3, x86.CALL))
    assert not site.explained and "hook_kill+0x3 [evil]" in site.explanation


def test_static_call_null_forms() -> None:
    tramp_old = bytes.fromhex("e9d30e21ff")
    assert judge(SCT, tramp_old, b"\xc3\xcc\xcc\xcc\xcc", before=b"", after=x86.TRAMP_UD).explained
    # A NOP would fall through into the trampoline's ud1 signature: never written there.
    assert not judge(SCT, tramp_old, x86.NOP5, before=b"", after=x86.TRAMP_UD).explained
    site_old = bytes.fromhex("e870f7ffff")
    assert judge(CALL_SITE, site_old, x86.NOP5).explained
    assert judge(CALL_SITE, site_old, x86.XOR5RAX[0]).explained
    assert not judge(CALL_SITE, site_old, jmp32(CALL_SITE, PERF_SYSCALL_ENTER)).explained  # no tail
    assert judge(CALL_SITE, site_old, jmp32(CALL_SITE, HOOK, x86.CALL)).explained  # module start


# --- ftrace sites ------------------------------------------------------------------------------


def test_e9_at_a_function_start_is_an_inline_hook() -> None:
    verdict = judge(SYS_KILL, x86.NOP5, jmp32(SYS_KILL, HOOK))
    assert not verdict.explained
    assert verdict.technique == "inline-hook"
    assert verdict.location == "__x64_sys_kill+0x0"
    assert verdict.explanation.endswith("now jumps to hook_kill+0x0 [evil]")
    assert verdict.disasm_new.startswith(f"jmp {HOOK:#x}")


def test_ftrace_call_to_bpf_trampoline_with_a_live_owner_is_explained() -> None:
    site = VFS_READ + 4
    owners = {VFS_READ: "BPF link 7 (fentry prog 42 trace_read)"}
    verdict = judge(
        site,
        x86.NOP5,
        jmp32(site, BPF_TRAMPOLINE, x86.CALL),
        index(ftrace_owners=owners),
        before=x86.ENDBR64,
    )
    assert verdict.explained, verdict.explanation
    assert verdict.technique == "ftrace-site"
    assert verdict.owner == owners[VFS_READ]
    assert verdict.location == "vfs_read+0x4"
    assert "bpf_trampoline_6442450945+0x0 [bpf]" in verdict.explanation


def test_a_direct_calls_site_must_call_the_trampoline_it_reaches() -> None:
    """The owner of a direct call is the trampoline memory found at its target (owners.py):
    the site calling another BPF trampoline is not explained by it."""
    site = VFS_READ + 4
    said = "BPF trampoline bpf_trampoline_6442450945 at 0xffffffffc0203000 running fentry prog 42"
    owners, elsewhere = {VFS_READ: said}, BPF_TRAMPOLINE + 0x800
    call = index(ftrace_owners=owners, ftrace_direct={VFS_READ: BPF_TRAMPOLINE})
    calls = {"ftrace_trampolines": [BPF_TRAMPOLINE, elsewhere]}
    ok = judge(site, x86.NOP5, jmp32(site, BPF_TRAMPOLINE, x86.CALL), call, before=x86.ENDBR64)
    assert ok.explained and ok.owner == said
    moved = index(ftrace_owners=owners, ftrace_direct={VFS_READ: BPF_TRAMPOLINE}, **calls)
    bad = judge(site, x86.NOP5, jmp32(site, elsewhere, x86.CALL), moved, before=x86.ENDBR64)
    assert not bad.explained and "which its direct call reaches" in bad.explanation
    assert "bpf_trampoline_6442450945+0x0 [bpf]" in bad.explanation


@pytest.mark.parametrize("sealed", [x86.ENDBR_POISON, x86.ENDBR_POISON_OSP], ids=["6.15", "6.12"])
def test_the_ftrace_site_after_a_sealed_endbr_is_one(sealed: bytes) -> None:
    """IBT seals the ENDBR64 of a function nothing calls indirectly; the lab's 6.12 with
    `osp nopl (%rax)` (66 0f 1f 00), later kernels with `nopl -42(%rax)`: its ftrace site is
    still the 5 bytes after it (seen in the lab: vfs_read under bpftrace's fentry)."""
    site = VFS_READ + 4
    owners = {VFS_READ: "BPF trampoline bpf_trampoline_6442450945 running fentry prog 42"}
    new = jmp32(site, BPF_TRAMPOLINE, x86.CALL)
    verdict = judge(site, x86.NOP5, new, index(ftrace_owners=owners), before=sealed)
    assert verdict.explained and verdict.technique == "ftrace-site", verdict.explanation


def test_ftrace_site_of_a_weak_function_is_one_too() -> None:
    # kallsyms types __weak functions W (seen in the lab: fentry on calibration_delay_done)
    weak = 0xFFFFFFFF81249A50
    owners = {weak: "BPF link 9 (fentry prog 51 pg_bench)"}
    verdict = judge(
        weak, x86.NOP5, jmp32(weak, BPF_TRAMPOLINE, x86.CALL), index(ftrace_owners=owners)
    )
    assert verdict.explained and verdict.technique == "ftrace-site", verdict.explanation


def test_ftrace_call_whose_owner_is_gone_is_tampering() -> None:
    site = VFS_READ + 4
    verdict = judge(site, x86.NOP5, jmp32(site, BPF_TRAMPOLINE, x86.CALL), before=x86.ENDBR64)
    assert not verdict.explained
    assert verdict.technique == "inline-hook"
    assert "no ftrace ops, BPF link or livepatch owns this function" in verdict.explanation


def test_ftrace_call_to_something_not_a_trampoline_is_tampering() -> None:
    owners = {SYS_KILL: "ftrace ops of livepatch fix"}
    verdict = judge(
        SYS_KILL, x86.NOP5, jmp32(SYS_KILL, HOOK, x86.CALL), index(ftrace_owners=owners)
    )
    assert not verdict.explained
    assert "not an ftrace or BPF trampoline" in verdict.explanation


def test_ftrace_site_back_to_nop_and_between_trampolines() -> None:
    caller = jmp32(SYS_KILL, 0xFFFFFFFF813327D0, x86.CALL)  # ftrace_caller
    assert judge(SYS_KILL, caller, x86.NOP5).explanation == "ftrace site back to NOP"
    regs = jmp32(SYS_KILL, 0xFFFFFFFF813328C0, x86.CALL)  # only the rel32 changes
    owned = index(ftrace_owners={SYS_KILL: "ftrace ops kprobe_ftrace_ops"})
    verdict = judge(SYS_KILL, caller, regs, owned)
    assert verdict.explained and verdict.owner == "ftrace ops kprobe_ftrace_ops"
    assert verdict.old == caller


def test_ftrace_site_after_a_sealed_endbr() -> None:
    site = VFS_READ + 4
    owned = index(ftrace_owners={VFS_READ: "BPF link 7"})
    call = jmp32(site, BPF_TRAMPOLINE, x86.CALL)
    assert judge(site, x86.NOP5, call, owned, before=x86.ENDBR_POISON).explained
    assert not judge(site, x86.NOP5, call, owned, before=b"\x90" * 4).explained  # no ENDBR: +4


def test_init_sites_explain_nothing() -> None:
    init = index(jump_entries=[JumpEntry(JUMP_SITE, JUMP_TARGET, TP_KEY, False, init=True)])
    verdict = judge(JUMP_SITE, x86.NOP2, bytes.fromhex("eb61"), init)
    assert not verdict.explained and verdict.technique == "patched-code"
    call = index(static_call_sites=[StaticCallSite(CALL_SITE, 0, tail=False, init=True)])
    assert not judge(CALL_SITE, bytes.fromhex("e870f7ffff"), x86.NOP5, call).explained


def test_nop5_over_code_that_was_no_ftrace_site_is_tampering() -> None:
    assert not judge(SYS_KILL, bytes.fromhex("4889e54154"), x86.NOP5).explained


# --- kprobes and plain tampering ---------------------------------------------------------------


def test_int3_at_a_kprobe_and_elsewhere() -> None:
    probed = SYS_KILL + 0x20
    idx = index(kprobes={probed: "kprobe p:kill_probe"})
    verdict = judge(probed, b"\x48", b"\xcc", idx)
    assert verdict.explained and verdict.technique == "kprobe"
    assert verdict.owner == "kprobe p:kill_probe"
    stray = judge(probed + 0x10, b"\x48", b"\xcc", idx)
    assert not stray.explained and "no kprobe is registered" in stray.explanation
    assert stray.technique == "patched-code"  # 0x30 bytes into the function
    optimized = jmp32(probed, 0xFFFFFFFFC0205000)
    assert judge(probed, bytes.fromhex("4889e54154"), optimized, idx).explained


def test_patched_return_and_patched_code() -> None:
    mid = TRACE_ENTER + 0x60
    assert judge(mid, b"\xc3", b"\x90").technique == "patched-return"
    assert judge(mid, b"\x48\x89", b"\x31\xc0").technique == "patched-code"
    near_start = judge(TRACE_ENTER + 8, b"\x48\x89\xe5\x41\x54", jmp32(TRACE_ENTER + 8, HOOK))
    assert near_start.technique == "inline-hook" and not near_start.explained


def test_a_run_reaching_past_its_site_is_tampering() -> None:
    verdict = judge(JUMP_SITE, x86.NOP2 + b"\x48\x89", bytes.fromhex("eb61") + b"\x90\x90")
    assert not verdict.explained
    assert "reach outside the jump label at syscall_trace_enter+0xe2" in verdict.explanation


def test_explain_judges_merged_neighbouring_sites_apart() -> None:
    second = JUMP_SITE + 4  # two NOP2 sites 2 bytes apart: diff_runs merges them
    entries = [
        JumpEntry(JUMP_SITE, JUMP_TARGET, TP_KEY, branch=False),
        JumpEntry(second, JUMP_TARGET, TP_KEY, branch=False),
    ]
    old = x86.NOP2 + b"\x48\x89" + x86.NOP2
    new = bytes.fromhex("eb61") + b"\x48\x89" + bytes([0xEB, 0x5D])
    (run,) = diff_runs(FILL + old + FILL, FILL + new + FILL, JUMP_SITE - len(FILL))
    verdicts = explain([run], index(jump_entries=entries), SYMS)
    assert [(v.address, v.explained) for v in verdicts] == [(JUMP_SITE, True), (second, True)]
    assert not classify(run, index(jump_entries=entries), SYMS).explained  # whole: reaches past
