"""Naming the owner of a changed jump label or static call: the `struct tracepoint` found from
its key over a memory image laid out with the captured 6.18 BTF's offsets (the live test
test_check_live.py reads the real ones), and how explain says it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.integrity.explain import ChangedRun, SiteIndex, classify
from patchguard.integrity.owners import kprobe_said
from patchguard.integrity.tracepoint_keys import TracepointKeys
from patchguard.kernel.btf import Btf
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.tracepoints import Layout, TracepointReader, layout, tracepoint_of_event
from patchguard.surfaces.tracing import Kprobe
from patchguard.x86 import insn as x86
from patchguard.x86.insn import JumpEntry, StaticCallSite

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
TEXT = 0xFFFFFFFF81000000
SITE, TARGET, CALL = TEXT + 0x100, TEXT + 0x140, TEXT + 0x200
SCT, OTHER_SCT = TEXT + 0x1000, TEXT + 0x1008
PERF, GLUE = TEXT + 0x2000, TEXT + 0x2100
TP, NAME, FUNCS = 0xFFFFFFFF82A0C2E0, 0xFFFFFFFF82000000, 0xFFFF888100000000
SCK = 0xFFFFFFFF82A0C400  # the tracepoint's static_call_key
PLAIN_KEY = 0xFFFFFFFF82B00010  # a static key of no tracepoint, 0x10 past a data symbol
SYMS_TEXT = (
    f"{TEXT:016x} T _stext\n{TEXT:016x} T syscall_trace_enter\n{TEXT + 0x100000:016x} T _etext\n"
    f"{SCT:016x} T __SCT__tp_func_sys_enter\n"
    f"{OTHER_SCT:016x} T __SCT__tp_func_sys_exit\n{PERF:016x} T perf_syscall_enter\n"
    f"{GLUE:016x} t __bpf_trace_sys_enter\n{PLAIN_KEY - 0x10:016x} T __start_once\n"
)
SYMS = SymbolTable.parse(SYMS_TEXT)
USERS = {"sys_enter": ["BPF prog 7 pg_test_tp (tracepoint:sys_enter_kill via perf event)"]}


@pytest.fixture(scope="module")
def lay() -> Layout:
    found = layout(Btf.parse(gzip.decompress(VMLINUX.read_bytes())))
    assert found is not None and found.check_prefix == "__SCT__tp_func_"
    return found


def image(lay: Layout, tramp: int = SCT, name: bytes = b"sys_enter") -> Image:
    mem = Image()
    words = [0] * (lay.size // 8)
    words[lay.name // 8], words[lay.check // 8], words[lay.funcs // 8] = NAME, tramp, FUNCS
    assert lay.static_call_key is not None
    words[lay.static_call_key // 8] = SCK
    mem.put_words(TP, *words)
    mem.put(NAME, name + b"\0" + b"x" * 200)
    step = lay.func_size // 8
    mem.put_words(FUNCS, *([PERF] + [0] * (step - 1) + [GLUE] + [0] * (step - 1) + [0] * step))
    mem.put_words(PLAIN_KEY - 0x40, *([0] * 32))
    return mem


def reader(lay: Layout, mem: Image) -> TracepointReader:
    proofs = {s.address: s.name for s in SYMS.with_prefix("__SCT__tp_func_")}
    return TracepointReader(mem, lay, proofs)


def test_the_tracepoint_around_a_key_its_name_and_probes(lay: Layout) -> None:
    tp = reader(lay, image(lay)).at_key(TP + lay.key)
    assert tp is not None and (tp.name, tp.address) == ("sys_enter", TP)
    assert tp.probes == (PERF, GLUE) and tp.static_call_key == SCK


def test_a_struct_whose_name_and_trampoline_disagree_is_no_tracepoint(lay: Layout) -> None:
    assert reader(lay, image(lay, tramp=OTHER_SCT)).at_key(TP + lay.key) is None
    assert reader(lay, image(lay, name=b"sys\nenter")).at_key(TP + lay.key) is None
    assert reader(lay, image(lay)).at_key(PLAIN_KEY) is None  # not a trampoline: no name read


def test_static_call_key_found_through_the_jump_keys(lay: Layout) -> None:
    read = reader(lay, image(lay))
    found = read.by_call_key(SCK, [PLAIN_KEY, TP + lay.key])
    assert found is not None and found.name == "sys_enter"
    assert read.by_call_key(SCK + 8, [PLAIN_KEY, TP + lay.key]) is None


def index(lay: Layout, keys: TracepointKeys | None, key: int) -> SiteIndex:
    return SiteIndex(
        jump_entries=[JumpEntry(SITE, TARGET, key, branch=False)],
        static_call_sites=[StaticCallSite(CALL, SCK, False, False)],
        trampolines=[("__SCT__tp_func_sys_enter", SCT)],
        keys=keys,
    )


def namer(lay: Layout, idx: SiteIndex) -> TracepointKeys:
    return TracepointKeys(reader(lay, image(lay)), SYMS, USERS, idx.jump_keys)


def test_jump_label_static_call_and_trampoline_name_the_tracepoint_and_its_users(
    lay: Layout,
) -> None:
    idx = index(lay, None, TP + lay.key)
    idx.keys = namer(lay, idx)
    label = classify(ChangedRun(SITE, x86.NOP2, bytes.fromhex("eb3e")), idx, SYMS)
    call_new = b"\xe8" + (PERF - (CALL + 5)).to_bytes(4, "little", signed=True)
    call = classify(ChangedRun(CALL, x86.NOP5, call_new), idx, SYMS)
    tramp_new = b"\xe9" + (PERF - (SCT + 5)).to_bytes(4, "little", signed=True)
    tramp = classify(ChangedRun(SCT, b"\xc3\xcc\xcc\xcc\xcc", tramp_new), idx, SYMS)
    assert "the key of tracepoint sys_enter (unlikely)" in label.explanation
    assert "static call site of tracepoint sys_enter now calls" in call.explanation
    assert "__SCT__tp_func_sys_enter of tracepoint sys_enter now jumps" in tramp.explanation
    for verdict in (label, call, tramp):
        assert verdict.explained, verdict.explanation
        assert verdict.owner == (
            "tracepoint sys_enter: BPF prog 7 pg_test_tp (tracepoint:sys_enter_kill via perf "
            "event); probes perf_syscall_enter, __bpf_trace_sys_enter"
        )


def test_a_key_of_no_tracepoint_is_its_address_not_the_symbol_below(lay: Layout) -> None:
    for keys in (True, False):
        idx = index(lay, None, PLAIN_KEY)
        idx.keys = namer(lay, idx) if keys else None
        verdict = classify(ChangedRun(SITE, x86.NOP2, bytes.fromhex("eb3e")), idx, SYMS)
        assert verdict.explained and verdict.owner is None
        assert f"static key {PLAIN_KEY:#x} (unlikely)" in verdict.explanation
        assert "__start_once" not in verdict.explanation


def test_syscall_events_run_on_sys_enter_and_sys_exit() -> None:
    assert tracepoint_of_event("sys_enter_kill") == "sys_enter"
    assert tracepoint_of_event("syscalls:sys_exit_openat") == "sys_exit"
    assert tracepoint_of_event("sched_switch") == "sched_switch"


def test_a_kprobe_is_said_once_with_who_registered_it() -> None:
    probe = Kprobe(TEXT + 0x20, "kprobe", "commit_creds", 0, None, target="commit_creds+0x0")
    owned = kprobe_said(Kprobe(**{**probe.__dict__, "handler": "p_cb", "handler_module": "lkrg"}))
    assert owned == "kprobe on commit_creds+0x0 registered by p_cb [lkrg]"
    assert kprobe_said(probe) == "kprobe on commit_creds+0x0"
    idx = SiteIndex(kprobes={TEXT + 0x20: owned})
    verdict = classify(ChangedRun(TEXT + 0x20, b"\x48", b"\xcc"), idx, SYMS)
    assert verdict.explanation == f"INT3 of the {owned}" and verdict.owner == owned
    assert verdict.explanation.count("kprobe") == 1


def test_a_probe_past_its_symbols_extent_is_named_by_bounds_not_the_symbol_below(
    lay: Layout,
) -> None:
    mem = image(lay)
    stray = GLUE + 0x80  # inside no function this image's kallsyms bounds it to
    step = lay.func_size // 8
    mem.put_words(FUNCS, *([PERF] + [0] * (step - 1) + [stray] + [0] * (step - 1) + [0] * step))
    bounds = SymbolTable.parse(SYMS_TEXT + f"{GLUE + 0x40:016x} t next_function\n")
    keys = TracepointKeys(
        reader(lay, mem), bounds, USERS, lambda: [], lambda a: f"{a:#x} (memory of no module)"
    )
    said = keys.jump_key(TP + lay.key).owner or ""
    assert f"probes perf_syscall_enter, {stray:#x} (memory of no module)" in said
    assert "next_function" not in said
