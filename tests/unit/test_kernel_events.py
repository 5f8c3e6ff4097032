"""The guard's wake-up programs (guard/kernel_events.py), decoded. The exit program: every jump
lands on the return check or the `return 0`; the guard's own process, a failed call and a
bpf(2) its entry program did not mark never reach the ring-buffer write. The entry program:
it marks a call for exactly the commands in WAKE_CMDS, and never the guard's own. Loading and
attaching them, and which commands ring, are proven live (tests/live/test_guard_events_live.py)."""

from __future__ import annotations

from patchguard.guard import kernel_events as ke
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import BPF_CALL, BPF_EXIT, BPF_JMP, decode

OWN_TGID = 4242
JEQ, JNE, JSLT, JA = BPF_JMP | 0x10, BPF_JMP | ke.BPF_JNE, BPF_JMP | ke.BPF_JSLT, BPF_JMP
Insn = tuple[int, int, int, int, int]


def jumps(insns: list[Insn]) -> list[tuple[int, int, int, int]]:
    """(code, dst, imm, target) of every jump but calls and exit."""
    return [
        (code, dst, imm, i + 1 + off)
        for i, (code, dst, _, off, imm) in enumerate(insns)
        if code & 0x07 == BPF_JMP and code not in (BPF_JMP | BPF_CALL, BPF_JMP | BPF_EXIT)
    ]


def ends_with_return_zero(insns: list[Insn]) -> int:
    ret = len(insns) - 2
    assert insns[ret] == (0xB7, 0, 0, 0, 0) and insns[-1][0] == BPF_JMP | BPF_EXIT  # r0 = 0
    return ret


def test_the_exit_program_skips_the_write_for_its_own_failed_and_unmarked_calls() -> None:
    insns = decode(ke.wake_program(ring_fd=7, cmds_fd=8, own_tgid=OWN_TGID))
    ret = ends_with_return_zero(insns)
    ret_check = next(i for i, x in enumerate(insns) if x[:2] == (0x79, 9))  # r9 = ret
    assert set(jumps(insns)) == {
        (JEQ, 0, OWN_TGID, ret),  # r0 = tgid: the guard itself
        (JNE, 8, bpf.NR_BPF, ret_check),  # not bpf(2): no mark to look for
        (JNE, 0, 0, ret),  # the mark's delete failed: not a marked command
        (JSLT, 9, 0, ret),  # a failed call
    }
    calls = [x[4] for x in insns if x[0] == BPF_JMP | BPF_CALL]
    assert calls[-1] == ke.BPF_FUNC_ringbuf_output
    assert calls.index(ke.BPF_FUNC_map_delete_elem) < calls.index(ke.BPF_FUNC_ringbuf_output)


def test_the_entry_program_marks_exactly_the_hook_commands() -> None:
    insns = decode(ke.bpf_cmd_program(cmds_fd=8, own_tgid=OWN_TGID))
    ret = ends_with_return_zero(insns)
    found = jumps(insns)
    mark = next(t for code, dst, _, t in found if (code, dst) == (JEQ, 1))
    assert insns[mark][0] == 0x63 and insns[mark][3] == -16  # *(u32 *)(r10 - 16) = cmd
    assert {imm for code, dst, imm, t in found if (code, dst, t) == (JEQ, 1, mark)} == set(
        ke.WAKE_CMDS
    )
    assert (JEQ, 0, OWN_TGID, ret) in found and (JA, 0, 0, ret) in found
    assert len(found) == len(ke.WAKE_CMDS) + 2
    assert [x[4] for x in insns if x[0] == BPF_JMP | BPF_CALL][-1] == ke.BPF_FUNC_map_update_elem
