"""A few eBPF instructions, encoded as struct bpf_insn, to build small programs without a compiler.

Used by the kernel-memory reader and by the tests that load real programs. The encoding follows
Documentation/bpf/standardization/instruction-set.rst: code, dst_reg:4 | src_reg:4, off, imm.
"""

from __future__ import annotations

import struct

# Instruction classes and fields (uapi linux/bpf_common.h, linux/bpf.h).
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_ALU64 = (
    0x00,
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x07,
)
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_MEM = 0x00, 0x60
BPF_K, BPF_X = 0x00, 0x08
BPF_ADD, BPF_AND, BPF_RSH, BPF_MOV = 0x00, 0x50, 0x70, 0xB0
BPF_JA, BPF_JEQ, BPF_JGT = 0x00, 0x10, 0x20
BPF_CALL, BPF_EXIT = 0x80, 0x90
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_PSEUDO_CALL = 1
BPF_PSEUDO_KFUNC_CALL = 2

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
SIZES = {8: BPF_DW, 4: BPF_W, 2: BPF_H, 1: BPF_B}


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def mov64_imm(dst: int, imm: int) -> bytes:
    return insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, imm=imm)


def mov64_reg(dst: int, src: int) -> bytes:
    return insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src)


def add64_imm(dst: int, imm: int) -> bytes:
    return insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, imm=imm)


def rsh64_imm(dst: int, imm: int) -> bytes:
    return insn(BPF_ALU64 | BPF_RSH | BPF_K, dst, imm=imm)


def ldx_mem(size: int, dst: int, src: int, off: int) -> bytes:
    return insn(BPF_LDX | BPF_MEM | SIZES[size], dst, src, off)


def st_mem(size: int, dst: int, off: int, imm: int) -> bytes:
    return insn(BPF_ST | BPF_MEM | SIZES[size], dst, off=off, imm=imm)


def stx_mem(size: int, dst: int, src: int, off: int) -> bytes:
    return insn(BPF_STX | BPF_MEM | SIZES[size], dst, src, off)


def jeq_imm(dst: int, imm: int, off: int) -> bytes:
    return insn(BPF_JMP | BPF_JEQ | BPF_K, dst, off=off, imm=imm)


def jgt_imm(dst: int, imm: int, off: int) -> bytes:
    return insn(BPF_JMP | BPF_JGT | BPF_K, dst, off=off, imm=imm)


def call(helper_id: int) -> bytes:
    return insn(BPF_JMP | BPF_CALL, imm=helper_id)


def exit_insn() -> bytes:
    return insn(BPF_JMP | BPF_EXIT)


def ld_imm64(dst: int, value: int) -> bytes:
    """The two-slot ld_imm64 of a 64-bit constant: low word in the first slot, high in the
    second."""
    low, high = struct.unpack("<ii", value.to_bytes(8, "little"))
    return insn(BPF_LD | BPF_DW | BPF_IMM, dst, imm=low) + insn(0, imm=high)


BPF_FUNC_map_lookup_elem = 1


def value_at_key_0(map_fd: int, missing: int) -> list[bytes]:
    """r0 = the value at key 0 of an array map (the key on the stack at r10-4); where there is
    none, jump `missing` instructions on (the verifier wants the NULL case handled)."""
    return [
        st_mem(4, R10, -4, 0),
        mov64_reg(R2, R10),
        add64_imm(R2, -4),
        ld_map_fd(R1, map_fd),
        call(BPF_FUNC_map_lookup_elem),
        jeq_imm(R0, 0, missing),
    ]


def ld_map_value(dst: int, map_fd: int, offset: int) -> bytes:
    """The two-slot ld_imm64 that the verifier turns into a pointer `offset` bytes into the
    value of a one-entry array map (BPF_PSEUDO_MAP_VALUE)."""
    return insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_VALUE, imm=map_fd) + insn(
        0, imm=offset
    )


def ld_map_fd(dst: int, map_fd: int) -> bytes:
    """The two-slot ld_imm64 that the verifier turns into a pointer to the map."""
    return insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, imm=map_fd) + insn(0)


def decode(program: bytes) -> list[tuple[int, int, int, int, int]]:
    """(code, dst, src, off, imm) for each 8-byte slot of a program."""
    return [
        (code, regs & 0x0F, regs >> 4, off, imm)
        for code, regs, off, imm in struct.iter_unpack("<BBhi", program)
    ]
