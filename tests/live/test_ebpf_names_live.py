"""One name per thing, on the running kernel: a program's full name from its BTF (two programs
whose 15-character kernel names are equal read apart), tail calls named bpf_tail_call with the
table's contents, one owner per process with its fd count, a hook kept only by a pinned link
said to be so, and the exec tracepoint matched in every spelling."""

from __future__ import annotations

import os
import struct

import pytest
from support import bpfprogs as bp
from support.ebpf_scan import findings_for, programs, scan_json

from patchguard.kernel.bpf import syscall as bpf

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_full_names_from_btf_tell_apart_programs_the_kernel_names_alike() -> None:
    names = ["handle_getdents_enter_hide", "handle_getdents_exit_hide"]
    made = [bp.load_with_btf(bp.BPF_PROG_TYPE_TRACEPOINT, bp.return_zero(), n) for n in names]
    try:
        progs = programs(scan_json())
        records = [progs[p.prog_id] for p in made]
    finally:
        for prog in made:
            prog.close()
    assert [r["name"] for r in records] == names
    assert {r["kernel_name"] for r in records} == {"handle_getdents"}


def test_tail_calls_are_named_with_the_table_contents() -> None:
    target = bp.load(bp.BPF_PROG_TYPE_TRACEPOINT, bp.return_zero(), "pg_t_tail_tgt")
    table = bpf.map_create(bp.BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 4, "pg_t_calls")
    caller = None
    try:
        bpf.map_update(table, struct.pack("<I", 2), struct.pack("<I", target.prog_fd))
        caller = bp.load(bp.BPF_PROG_TYPE_TRACEPOINT, bp.tail_caller(table), "pg_t_tail_src")
        progs = programs(scan_json())
    finally:
        for prog in (caller, target):
            if prog is not None:
                prog.close()
        os.close(table)
    record = progs[caller.prog_id]
    assert "bpf_tail_call" in record["helpers"]
    assert not [h for h in record["helpers"] if h.startswith("helper@")]
    assert record["tail_calls"] == [target.prog_id]
    [table_words] = record["maps"]
    assert "pg_t_calls, prog_array" in table_words and "not pinned" in table_words
    kept = progs[target.prog_id]["kept_by"]
    assert any(k.startswith("slot 2 of tail-call table map ") for k in kept), kept


def test_one_owner_per_process_with_its_fd_count() -> None:
    prog = bp.load(bp.BPF_PROG_TYPE_TRACEPOINT, bp.return_zero(), "pg_t_many_fds")
    extra = [os.dup(prog.prog_fd) for _ in range(2)]
    prog.fds += extra
    lowest = min(prog.prog_fd, *extra)
    with prog:
        record = programs(scan_json())[prog.prog_id]
    [owner] = record["owners"]
    assert owner["pid"] == os.getpid() and owner["fd_count"] == 3 and owner["fd"] == lowest
    assert record["kept_by"] == [f"pid {os.getpid()} ({owner['comm']}) holds 3 fds"]


def test_a_hook_kept_by_a_pinned_link_alone_says_so() -> None:
    prog = bp.pinned_raw_tracepoint_link("sched_process_exec", "pg_t_pinned_link")
    try:
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
        found = findings_for(doc, prog.prog_id)
        pin = prog.pin
    finally:
        prog.close()
    assert record["owners"] == [] and record["pins"] == []
    [keeper] = record["kept_by"]
    assert keeper.endswith(f"pinned at {pin}: a pin alone keeps this hook alive")
    hook = next(f for f in found if f["technique"] == "sensitive-hook")
    assert keeper in hook["evidence"]["kept_by"]
    assert "raw_tracepoint:sched_process_exec" in hook["summary"]


def test_exec_tracepoint_is_sensitive_in_perf_spelling() -> None:
    with bp.attach_tracepoint("sched", "sched_process_exec", "pg_t_exec_tp") as prog:
        doc = scan_json()
        record = programs(doc)[prog.prog_id]
        found = findings_for(doc, prog.prog_id)
    # BPF_TASK_FD_QUERY names it without its category: tracepoint:sched_process_exec
    assert [a["target"] for a in record["attachments"]] == ["tracepoint:sched_process_exec"]
    assert any(f["technique"] == "sensitive-hook" for f in found)
