"""The kernel symbolizer's pieces that need no kernel: its %pS parsing and its program."""

from __future__ import annotations

from patchguard.kernel.bpf.insn import BPF_CALL, BPF_JMP, decode
from patchguard.kernel.bpf.symbolize import (
    BATCH,
    BPF_FUNC_snprintf,
    KernelName,
    parse_ps,
    symbolize_program,
)


def test_percent_ps_as_the_kernel_prints_it() -> None:
    assert parse_ps("do_sys_openat2+0x0/0x110") == KernelName("do_sys_openat2", 0, 0x110, None)
    assert parse_ps("ext4_seq_options_show+0x4/0x120 [ext4]") == KernelName(
        "ext4_seq_options_show", 4, 0x120, "ext4"
    )
    name = parse_ps("bpf_prog_6deef7357e7b4530_pg_kmem_read+0x2c/0x5c [bpf]")
    assert name is not None and name.module == "bpf"
    assert str(name) == "bpf_prog_6deef7357e7b4530_pg_kmem_read+0x2c [bpf]"


def test_addresses_no_symbol_covers() -> None:
    for text in ("0xffffffffc0000000", "0x0", "", "name+0x10", "name+0x1/0x2 [mod] extra"):
        assert parse_ps(text) is None, text


def test_the_program_formats_each_slot_once() -> None:
    calls = [
        imm for code, _, _, _, imm in decode(symbolize_program(3, 4)) if code == BPF_JMP | BPF_CALL
    ]
    assert calls.count(BPF_FUNC_snprintf) == BATCH
    assert len(calls) == BATCH + 1  # and one map lookup
