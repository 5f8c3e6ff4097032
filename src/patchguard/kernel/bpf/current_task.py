"""The address of the calling task's `struct task_struct`, from bpf_get_current_task().

A raw-tracepoint program run by BPF_PROG_TEST_RUN runs in the caller's context, so the helper
returns our own task. That address is a way into the kernel's task list (a circular list that
holds every thread-group leader and `init_task`) on kernels whose kallsyms lists no data
symbols (no CONFIG_KALLSYMS_ALL: `init_task` cannot be found by name). The program stores the
pointer in the value of a one-entry array map; user space reads it back.
"""

from __future__ import annotations

import os
import struct

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    R0,
    R6,
    call,
    exit_insn,
    mov64_imm,
    mov64_reg,
    stx_mem,
    value_at_key_0,
)
from patchguard.kernel.bpf.objects import prog_info
from patchguard.kernel.errors import KernelAccessError

BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_FUNC_get_current_task = 35


def current_task_program(map_fd: int) -> bytes:
    return b"".join(
        [
            *value_at_key_0(map_fd, 4),  # no value: skip to the exit
            mov64_reg(R6, R0),  # r6 = the map value
            call(BPF_FUNC_get_current_task),
            stx_mem(8, R6, R0, 0),
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    )


def current_task(own: set[int] | None = None) -> int:
    """Our own task_struct's address; KernelAccessError where bpf(2) refuses the program.
    The program's id goes into `own` (patchguard's objects, left out of the host's)."""
    try:
        map_fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1, "pg_cur_task")
    except bpf.BpfError as exc:
        raise KernelAccessError("current task program", exc.reason) from exc
    try:
        prog_fd = bpf.prog_load(
            BPF_PROG_TYPE_RAW_TRACEPOINT, current_task_program(map_fd), "pg_cur_task"
        )
        try:
            if own is not None:
                own.add(prog_info(prog_fd).prog_id)
            bpf.prog_test_run(prog_fd, struct.pack("<QQ", 0, 0))
        finally:
            os.close(prog_fd)
        return int.from_bytes(bpf.map_lookup(map_fd, struct.pack("<I", 0), 8), "little")
    except bpf.BpfError as exc:
        raise KernelAccessError("current task program", exc.reason) from exc
    finally:
        os.close(map_fd)


__all__ = ["current_task", "current_task_program"]
