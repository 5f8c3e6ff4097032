"""The kernel's own answer to "which vmlinux BTF type has this name and kind".

Finding a type id in Python means walking the type section up to it: vmlinux has ~126k types
and the walk costs ~35 ms of GIL-bound Python, most of the processes surface (it needs the id
of FUNC bpf_iter_task, halfway through). The kernel keeps its BTF parsed: a
BPF_PROG_TYPE_SYSCALL program calls bpf_btf_find_by_name_kind (5.16+) and BPF_PROG_TEST_RUN
runs it once, with the GIL released (~3 ms in C for a type halfway through, here).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Callable

from patchguard.kernel import bpf
from patchguard.kernel.bpf_insn import (
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R10,
    add64_imm,
    call,
    exit_insn,
    ld_imm64,
    mov64_imm,
    mov64_reg,
    stx_mem,
)
from patchguard.kernel.bpf_objects import prog_info

BPF_PROG_TYPE_SYSCALL = 31
BPF_F_SLEEPABLE = 1 << 4  # syscall programs must be sleepable
BPF_FUNC_btf_find_by_name_kind = 167
MAX_NAME = 256  # on the program's 512-byte stack, NUL included


def finder_program(name: bytes, kind: int) -> bytes:
    """Put `name` NUL-terminated on the stack, call the helper, store its 64-bit result
    (btf_obj_fd << 32 | type id, or -errno) at ctx[0], return 0."""
    raw = name + b"\0" * (8 - len(name) % 8)  # NUL-terminated, padded to whole words
    body = [mov64_reg(R6, R1)]  # r6 = ctx, the 8 bytes test_run copies in and back out
    for i in range(0, len(raw), 8):
        body += [
            ld_imm64(R1, int.from_bytes(raw[i : i + 8], "little")),
            stx_mem(8, R10, R1, i - len(raw)),
        ]
    body += [
        mov64_reg(R1, R10),
        add64_imm(R1, -len(raw)),
        mov64_imm(R2, len(name) + 1),  # name_sz counts the NUL
        mov64_imm(R3, kind),
        mov64_imm(R4, 0),  # flags: must be 0
        call(BPF_FUNC_btf_find_by_name_kind),
        stx_mem(8, R6, R0, 0),
        mov64_imm(R0, 0),
        exit_insn(),
    ]
    return b"".join(body)


def find_by_name_kind(name: str, kind: int, own: Callable[[int], None] | None = None) -> int | None:
    """The id of the vmlinux type of `kind` named `name`; None if vmlinux has none (a module
    that has one does not count). bpf.BpfError when the kernel cannot answer (before 5.16,
    no CAP_BPF, syscall programs refused): the caller then searches the BTF itself. `own`
    is told the program's id, so that a scan running beside it does not report it."""
    raw = name.encode()
    if not raw or b"\0" in raw or len(raw) >= MAX_NAME:
        return None  # no BTF name is empty, holds a NUL or is that long
    fd = bpf.prog_load(
        BPF_PROG_TYPE_SYSCALL,
        finder_program(raw, kind),
        "pg_btf_find",
        prog_flags=BPF_F_SLEEPABLE,
    )
    try:
        if own is not None:
            own(prog_info(fd).prog_id)
        found = _run(fd)
    finally:
        os.close(fd)
    if found == -errno.ENOENT:
        return None
    if found < 0:
        raise bpf.BpfError("bpf_btf_find_by_name_kind", -found)
    type_id, btf_fd = found & 0xFFFFFFFF, found >> 32
    if btf_fd:  # found in a module's BTF, of which the helper gave us an fd
        with contextlib.suppress(OSError):
            os.close(btf_fd)
        return None
    return type_id


def _run(prog_fd: int) -> int:
    """Run the program once; the helper's result comes back in the ctx (syscall programs
    get theirs copied back out, and their retval is only 32 bits)."""
    ctx = ctypes.create_string_buffer(8)
    attr = bytearray(bpf.ATTR_SIZE)
    struct.pack_into("<I", attr, 0, prog_fd)
    struct.pack_into("<IIQ", attr, 40, len(ctx), 0, bpf.addr_of(ctx))  # ctx_size_in, _out, ctx_in
    bpf.sys_bpf(bpf.BPF_PROG_TEST_RUN, attr, "PROG_TEST_RUN")
    return int(struct.unpack("<q", ctx.raw)[0])


__all__ = ["find_by_name_kind", "finder_program"]
