"""The guard's wake-up program (guard/kernel_events.py), decoded: every jump lands on one of
its two labels, the ring-buffer write or the `return 0`, and it ends with that return; the
guard's own process, a failed call and a bpf(2) that returned 0 never reach the write. Loading
and attaching it is proven live (tests/live/test_guard_events_live.py)."""

from __future__ import annotations

from patchguard.guard import kernel_events as ke
from patchguard.kernel.bpf.insn import BPF_CALL, BPF_EXIT, BPF_JMP, decode

OWN_TGID = 4242


def program() -> list[tuple[int, int, int, int, int]]:
    return decode(ke.wake_program(ring_fd=7, own_tgid=OWN_TGID))


def test_every_jump_lands_on_the_write_or_the_return() -> None:
    insns = program()
    calls = [i for i, x in enumerate(insns) if x[0] == BPF_JMP | BPF_CALL]
    write = next(i for i in calls if insns[i][4] == ke.BPF_FUNC_ringbuf_output)
    ret = len(insns) - 2
    assert insns[ret] == (0xB7, 0, 0, 0, 0) and insns[-1][0] == BPF_JMP | BPF_EXIT  # r0 = 0
    emit = next(i for i in range(write, -1, -1) if insns[i][0] == 0x7B)  # the store of nr
    jumps = [
        (i, i + 1 + off)
        for i, (code, _, _, off, _) in enumerate(insns)
        if code & 0x07 == BPF_JMP and code not in (BPF_JMP | BPF_CALL, BPF_JMP | BPF_EXIT)
    ]
    assert jumps and all(target in (emit, ret) for _, target in jumps), (jumps, emit, ret)


def test_what_skips_the_write() -> None:
    insns = program()
    ret = len(insns) - 2
    skips = {(code, dst, imm) for i, (code, dst, _, off, imm) in enumerate(insns)
             if code & 0x07 == BPF_JMP and i + 1 + off == ret}  # fmt: skip
    jeq, jslt = BPF_JMP | 0x10, BPF_JMP | ke.BPF_JSLT
    assert (jeq, 0, OWN_TGID) in skips  # r0 = tgid: the guard itself
    assert (jslt, 2, 0) in skips  # r2 = ret < 0: a failed call
    assert (jeq, 2, 0) in skips  # a bpf(2) that returned 0 (reached only for nr == bpf)
