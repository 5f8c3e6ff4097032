"""Naming kernel addresses the way the kernel prints them (%pS: `symbol+offset/size [module]`),
asked of the kernel itself.

Naming an address from /proc/kallsyms means waiting ~40 ms of kernel time for the file to be
read, then searching 5 MB of text in Python. The kernel has its symbols indexed: bpf_snprintf
(5.13+) formats "%pS" through kallsyms_lookup(), the same code that names addresses in an
oops. A BPF_PROG_TYPE_SYSCALL program formats BATCH addresses per run: user space writes them
into a mapped array value, BPF_PROG_TEST_RUN runs it once, and the names are read back from the
same mapping (~0.1 ms per 64 addresses here). The format string lives in a frozen read-only
map, as bpf_snprintf requires.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    add64_imm,
    call,
    exit_insn,
    ld_map_value,
    mov64_imm,
    mov64_reg,
    value_at_key_0,
)
from patchguard.kernel.bpf.lookup import BPF_F_SLEEPABLE, BPF_PROG_TYPE_SYSCALL, Own
from patchguard.kernel.bpf.objects import map_info, prog_info
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kallsyms import Location

BPF_FUNC_snprintf = 165
BATCH = 64  # addresses per run: a 524-instruction program
SLOT = 128  # bytes of output per address: a long name, offset, size and module fit
FORMAT = b"%pS\0\0\0\0\0"  # padded to the 8 bytes the value holds
VALUE = BATCH * 8 + BATCH * SLOT  # the addresses, then the names

# "do_sys_openat2+0x0/0x110", "ext4_seq_options_show+0x4/0x120 [ext4]"; an address no symbol
# covers comes back as its hex value.
_PS = re.compile(r"(\S+)\+0x([0-9a-f]+)/0x([0-9a-f]+)(?: \[([^\]\s]+)\])?\Z")


@dataclass(frozen=True)
class KernelName:
    """An address as the kernel names it."""

    name: str
    offset: int
    size: int  # of the symbol, up to the next one (0: not known, when kallsyms named it)
    module: str | None

    def __str__(self) -> str:
        module = f" [{self.module}]" if self.module else ""
        return f"{self.name}+{self.offset:#x}{module}"

    @classmethod
    def of(cls, location: Location) -> KernelName:
        """An address kallsyms named (it gives no sizes)."""
        return cls(location.symbol.name, location.offset, 0, location.symbol.module)


def parse_ps(text: str) -> KernelName | None:
    """One %pS result; None when no symbol covers the address."""
    match = _PS.match(text)
    if match is None:
        return None
    name, offset, size, module = match.groups()
    return KernelName(name, int(offset, 16), int(size, 16), module)


def symbolize_program(data_fd: int, format_fd: int) -> bytes:
    """For i < BATCH: bpf_snprintf(names[i], SLOT, "%pS", &addresses[i], 8)."""
    per_address: list[bytes] = []
    for i in range(BATCH):
        per_address += [
            mov64_reg(R1, R6),
            add64_imm(R1, BATCH * 8 + i * SLOT),
            mov64_imm(R2, SLOT),
            mov64_reg(R3, R7),
            mov64_reg(R4, R6),
            add64_imm(R4, i * 8),
            mov64_imm(R5, 8),
            call(BPF_FUNC_snprintf),
        ]
    body = [
        mov64_reg(R6, R0),  # r6 = the data value
        ld_map_value(R7, format_fd, 0),  # r7 = "%pS"
        *per_address,
    ]
    slots = sum(len(b) for b in body) // 8
    return b"".join(
        [
            *value_at_key_0(data_fd, slots),  # no value: nothing to do
            *body,
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    )


class Symbolizer:
    """The loaded program, its two maps and the mapped data value; names() is thread-safe."""

    def __init__(self, prog_fd: int, fds: tuple[int, int], value: mmap.mmap) -> None:
        self._prog_fd = prog_fd
        self._fds = fds
        self.map_ids = tuple(map_info(fd).map_id for fd in fds)
        self._value = value
        self._lock = threading.Lock()

    @classmethod
    def open(cls, own: Own | None = None) -> Symbolizer:
        """KernelAccessError where the kernel cannot (before 5.13, syscall programs or
        mappable arrays refused)."""
        fds: list[int] = []
        try:
            fds.append(
                bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1, "pg_fmt", bpf.BPF_F_RDONLY_PROG)
            )
            bpf.map_update(fds[0], struct.pack("<I", 0), FORMAT)
            bpf.sys_bpf(bpf.BPF_MAP_FREEZE, struct.pack("<I", fds[0]), "MAP_FREEZE")
            fds.append(
                bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, VALUE, 1, "pg_sym", bpf.BPF_F_MMAPABLE)
            )
            value = mmap.mmap(fds[1], VALUE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            program = symbolize_program(fds[1], fds[0])
            prog_fd = bpf.prog_load(
                BPF_PROG_TYPE_SYSCALL, program, "pg_symbolize", prog_flags=BPF_F_SLEEPABLE
            )
        except (OSError, KernelAccessError) as exc:
            for fd in fds:
                os.close(fd)
            reason = exc.reason if isinstance(exc, KernelAccessError) else str(exc)
            raise KernelAccessError("kernel symbolizer (bpf_snprintf %pS)", reason) from exc
        if own is not None:
            own(prog_info(prog_fd).prog_id)
        return cls(prog_fd, (fds[0], fds[1]), value)

    def names(self, addresses: Iterable[int]) -> dict[int, KernelName]:
        """The kernel's name for each address a symbol covers."""
        wanted = sorted(set(addresses))
        found: dict[int, KernelName] = {}
        for i in range(0, len(wanted), BATCH):
            batch = wanted[i : i + BATCH]
            for address, text in zip(batch, self._run(batch), strict=True):
                name = parse_ps(text)
                if name is not None:
                    found[address] = name
        return found

    def _run(self, batch: list[int]) -> list[str]:
        value = self._value
        with self._lock:
            value[: BATCH * 8] = struct.pack(f"<{BATCH}Q", *batch, *[0] * (BATCH - len(batch)))
            bpf.syscall_prog_run(self._prog_fd, b"")  # the addresses and names are in `value`
            raw = value[BATCH * 8 : BATCH * 8 + len(batch) * SLOT]
        return [
            raw[i * SLOT : (i + 1) * SLOT].split(b"\0", 1)[0].decode(errors="replace")
            for i in range(len(batch))
        ]

    def close(self) -> None:
        if self._prog_fd >= 0:
            self._value.close()
            for fd in (self._prog_fd, *self._fds):
                os.close(fd)
            self._prog_fd = -1


__all__ = ["BATCH", "KernelName", "Symbolizer", "parse_ps"]
