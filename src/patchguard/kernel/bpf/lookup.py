"""Asking the kernel itself, by name: the id of a vmlinux BTF type, the address of a symbol.

Both answers are in files too (/sys/kernel/btf/vmlinux, /proc/kallsyms), but finding them there
costs Python time: a BTF type id needs a walk of the type section up to it (~35 ms for one
halfway through vmlinux's 126k types), and /proc/kallsyms takes ~40 ms of kernel time to read
before anything can be found in it. The kernel keeps both indexed. A BPF_PROG_TYPE_SYSCALL
program puts the name on its stack, calls the helper (bpf_btf_find_by_name_kind,
bpf_kallsyms_lookup_name: 5.16+) and stores the answer in its ctx; BPF_PROG_TEST_RUN runs it
once, with the GIL released, and copies the ctx back (well under a millisecond each here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Callable

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
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
    ldx_mem,
    mov64_imm,
    mov64_reg,
    stx_mem,
)
from patchguard.kernel.bpf.objects import prog_info

BPF_PROG_TYPE_SYSCALL = 31
BPF_F_SLEEPABLE = 1 << 4  # syscall programs must be sleepable
BPF_FUNC_btf_find_by_name_kind = 167
BPF_FUNC_kallsyms_lookup_name = 179
MAX_NAME = 256  # on the program's 512-byte stack, NUL included
Own = Callable[[int], None]  # told the id of each program loaded, so a scan leaves it out


def _name_on_stack(raw: bytes) -> tuple[list[bytes], int]:
    """Instructions that put `raw` NUL-terminated on the stack, and its stack offset."""
    padded = raw + b"\0" * (8 - len(raw) % 8)  # NUL-terminated, padded to whole words
    at = -len(padded)
    code: list[bytes] = []
    for i in range(0, len(padded), 8):
        word = int.from_bytes(padded[i : i + 8], "little")
        code += [ld_imm64(R1, word), stx_mem(8, R10, R1, at + i)]
    return code, at


def finder_program(name: bytes, kind: int) -> bytes:
    """ctx[0] = bpf_btf_find_by_name_kind(name, kind): btf_obj_fd << 32 | type id, or
    -errno."""
    store, at = _name_on_stack(name)
    return b"".join(
        [
            mov64_reg(R6, R1),  # r6 = ctx, the bytes test_run copies in and back out
            *store,
            mov64_reg(R1, R10),
            add64_imm(R1, at),
            mov64_imm(R2, len(name) + 1),  # name_sz counts the NUL
            mov64_imm(R3, kind),
            mov64_imm(R4, 0),  # flags: must be 0
            call(BPF_FUNC_btf_find_by_name_kind),
            stx_mem(8, R6, R0, 0),
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    )


def address_program(name: bytes) -> bytes:
    """ctx[0] = the address bpf_kallsyms_lookup_name finds, ctx[1] = its return (0 or
    -errno)."""
    store, at = _name_on_stack(name)
    result = at - 8  # the u64 the helper writes, below the name
    return b"".join(
        [
            mov64_reg(R6, R1),
            *store,
            mov64_imm(R1, 0),
            stx_mem(8, R10, R1, result),
            mov64_reg(R1, R10),
            add64_imm(R1, at),
            mov64_imm(R2, len(name) + 1),
            mov64_imm(R3, 0),  # flags: must be 0
            mov64_reg(R4, R10),
            add64_imm(R4, result),
            call(BPF_FUNC_kallsyms_lookup_name),
            stx_mem(8, R6, R0, 8),
            ldx_mem(8, R1, R10, result),
            stx_mem(8, R6, R1, 0),
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    )


def _encoded(name: str) -> bytes | None:
    raw = name.encode()
    return raw if raw and b"\0" not in raw and len(raw) < MAX_NAME else None


def _run_once(program: bytes, name: str, own: Own | None, ctx_size: int) -> bytes:
    """Load a syscall program, run it once, return the ctx it left. bpf.BpfError when the
    kernel cannot (before 5.16, no CAP_BPF, syscall programs refused)."""
    fd = bpf.prog_load(BPF_PROG_TYPE_SYSCALL, program, name, prog_flags=BPF_F_SLEEPABLE)
    try:
        if own is not None:
            own(prog_info(fd).prog_id)
        return bpf.syscall_prog_run(fd, bytes(ctx_size))
    finally:
        os.close(fd)


def find_by_name_kind(name: str, kind: int, own: Own | None = None) -> int | None:
    """The id of the vmlinux type of `kind` named `name`; None if vmlinux has none (a module
    that has one does not count). bpf.BpfError when the kernel cannot answer: the caller
    then searches the BTF itself."""
    raw = _encoded(name)
    if raw is None:
        return None  # no BTF name is empty, holds a NUL or is that long
    ctx = _run_once(finder_program(raw, kind), "pg_btf_find", own, 8)
    (found,) = struct.unpack("<q", ctx)
    if found == -errno.ENOENT:
        return None
    if found < 0:
        raise bpf.BpfError("bpf_btf_find_by_name_kind", -found)
    type_id, btf_fd = int(found) & 0xFFFFFFFF, int(found) >> 32
    if btf_fd:  # found in a module's BTF, of which the helper gave us an fd
        with contextlib.suppress(OSError):
            os.close(btf_fd)
        return None
    return type_id


def symbol_address(name: str, own: Own | None = None) -> int | None:
    """The address kallsyms_lookup_name() gives `name` (the core kernel's symbol before any
    module's); None if there is none. bpf.BpfError when the kernel cannot answer (it also
    refuses where kallsyms would show zeros: kptr_restrict)."""
    raw = _encoded(name)
    if raw is None:
        return None
    ctx = _run_once(address_program(raw), "pg_ksym_addr", own, 16)
    address, ret = struct.unpack("<Qq", ctx)
    if ret == -errno.ENOENT:
        return None
    if ret < 0:
        raise bpf.BpfError("bpf_kallsyms_lookup_name", -ret)
    return int(address) or None


__all__ = ["address_program", "find_by_name_kind", "finder_program", "symbol_address"]
