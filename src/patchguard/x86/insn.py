"""x86-64 kernel self-patching: the instructions Linux writes into its own text, the tables that
record where (jump labels, static calls), and a disassembler.

Encodings from arch/x86/include/asm/nops.h, text-patching.h and arch/x86/kernel/static_call.c.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from typing import Any

NOP2 = bytes.fromhex("6690")  # x86_nops[2]: osp nop
NOP5 = bytes.fromhex("0f1f440000")  # x86_nops[5]: nopl 0x0(%rax,%rax,1)
ENDBR64 = bytes.fromhex("f30f1efa")
ENDBR_POISON = bytes.fromhex("0f1f40d6")  # nopl -42(%rax): an ENDBR64 sealed at boot (IBT)
# osp nopl (%rax): what earlier kernels seal an ENDBR64 with (the lab's 6.12: vfs_read's start)
ENDBR_POISON_OSP = bytes.fromhex("660f1f00")
ENDBRS = (ENDBR64, ENDBR_POISON, ENDBR_POISON_OSP)
TRAMP_UD = bytes.fromhex("0fb9cc")  # ud1 %esp,%ecx: the signature after a static call trampoline
# A static call site of __static_call_return0 is inlined as a 5-byte "return 0":
# "cs cs cs xorl %eax,%eax" since 6.1, "data16 data16 xorq %rax,%rax" before.
XOR5RAX = (bytes.fromhex("2e2e2e31c0"), bytes.fromhex("666648 31c0"))

JMP8, JMP32, CALL, RET, INT3 = 0xEB, 0xE9, 0xE8, 0xC3, 0xCC
# What an inline hook puts first: jmp rel8/rel32, call rel32, int3, jmp *[rip+disp32].
HOOK_PREFIXES = (b"\xe9", b"\xe8", b"\xeb", b"\xcc", b"\xff\x25")

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Branch:
    """A direct jmp/call/jcc decoded from the bytes at `address`."""

    kind: str  # "jmp", "call" or "jcc"
    length: int
    dest: int


def s32(raw: bytes) -> int:
    return int.from_bytes(raw[:4], "little", signed=True)


def branch(code: bytes, address: int) -> Branch | None:
    """The relative branch that `code` starts with, if any (JMP8, JMP32, CALL, Jcc rel32)."""
    if len(code) >= 2 and code[0] == JMP8:
        return Branch("jmp", 2, (address + 2 + int.from_bytes(code[1:2], signed=True)) & MASK64)
    if len(code) >= 5 and code[0] in (JMP32, CALL):
        kind = "jmp" if code[0] == JMP32 else "call"
        return Branch(kind, 5, (address + 5 + s32(code[1:5])) & MASK64)
    if len(code) >= 6 and code[0] == 0x0F and code[1] & 0xF0 == 0x80:
        return Branch("jcc", 6, (address + 6 + s32(code[2:6])) & MASK64)
    return None


def jump_site_length(code: bytes) -> int | None:
    """The length of a jump-label site from the instruction it holds: 2 (NOP2 or JMP8) or 5."""
    if code[:2] == NOP2 or code[:1] == bytes([JMP8]):
        return 2
    if code[:5] == NOP5 or code[:1] == bytes([JMP32]):
        return 5
    return None


@cache
def _capstone() -> Any:
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    return Cs(CS_ARCH_X86, CS_MODE_64)


def disasm(code: bytes, address: int) -> str:
    """ "jmp 0xffffffff81417d35; nop" - instructions joined by "; ", undecodable tail as .byte."""
    parts: list[str] = []
    done = 0
    for _, size, mnemonic, op_str in _capstone().disasm_lite(code, address):
        parts.append(f"{mnemonic} {op_str}".strip())
        done += int(size)
    if done < len(code):
        parts.append(".byte " + ", ".join(f"{b:#04x}" for b in code[done:]))
    return "; ".join(parts)


# The tables the kernel patches itself by (CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE, as on x86-64):
# struct jump_entry { s32 code; s32 target; long key; } (include/linux/jump_label.h) and
# struct static_call_site { s32 addr; s32 key; } (include/linux/static_call_types.h), every
# field relative to its own address, flags in the key's low bits.


@dataclass(frozen=True)
class JumpEntry:
    code: int  # the 2- or 5-byte site
    target: int  # where the JMP goes when the branch is taken
    key: int  # the struct static_key (flag bits cleared)
    branch: bool  # bit 0: static_branch_likely
    init: bool = False  # bit 1: the site is in init text


@dataclass(frozen=True)
class StaticCallSite:
    addr: int
    key: int  # the struct static_call_key (flag bits cleared)
    tail: bool  # STATIC_CALL_SITE_TAIL: holds JMP/RET/Jcc, not CALL/NOP
    init: bool  # STATIC_CALL_SITE_INIT


def decode_jump_table(raw: bytes, start: int) -> list[JumpEntry]:
    """The entries of a jump table whose first byte is at kernel address `start`."""
    if len(raw) % 16:
        raise ValueError(f"a jump table of {len(raw)} bytes is not whole 16-byte entries")
    entries = []
    for i, (code, target, key) in enumerate(struct.iter_unpack("<iiq", raw)):
        at = start + 16 * i
        where = ((at + code) & MASK64, (at + 4 + target) & MASK64, (at + 8 + (key & ~3)) & MASK64)
        entries.append(JumpEntry(*where, branch=bool(key & 1), init=bool(key & 2)))
    return entries


def decode_static_call_sites(raw: bytes, start: int) -> list[StaticCallSite]:
    """The static call sites of a table at `start`; the kernel takes the flags from the low bits
    of the key's address, not of the offset."""
    if len(raw) % 8:
        raise ValueError(f"static call sites of {len(raw)} bytes are not whole 8-byte entries")
    sites = []
    for i, (addr, key) in enumerate(struct.iter_unpack("<ii", raw)):
        at = start + 8 * i
        flagged = (at + 4 + key) & MASK64
        tail, init = bool(flagged & 1), bool(flagged & 2)
        sites.append(StaticCallSite((at + addr) & MASK64, flagged & ~3, tail, init))
    return sites
