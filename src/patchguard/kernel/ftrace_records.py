"""Every ftrace site of the running kernel, from ftrace's own records: the list of `struct
ftrace_page` at `ftrace_pages_start`, each holding `index` `struct dyn_ftrace` records whose
`ip` is one function's call site (the 5 bytes after its ENDBR64 under IBT), core kernel and
modules alike. Read through vmlinux BTF and the memory reader, so no text view (tracefs
`available_filter_functions`) can filter them.

`ftrace_pages_start` is a static variable: kallsyms lists it only with CONFIG_KALLSYMS_ALL.
Without it, its address is read out of `ftrace_rec_iter_start()`, whose first load from memory
is `iter->pg = ftrace_pages_start` (a `mov reg, [rip+disp32]`); the list found there is then
checked like any other (record addresses in kernel space, sane counts).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from itertools import compress, repeat
from operator import and_
from typing import TYPE_CHECKING

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64

if TYPE_CHECKING:
    from patchguard.kernel import Kernel
    from patchguard.kernel.attribution import Attributor

MAX_PAGES = 1 << 14  # a kernel has a few hundred ftrace pages; more is a loop or a misread
MAX_RECORDS = 1 << 16  # records in one page group (order <= 6 pages of 16-byte records)
ITER_CODE = 64  # bytes of ftrace_rec_iter_start() searched for its first load


@dataclass(frozen=True)
class RecordLayout:
    """Offsets (vmlinux BTF) of what is read from struct ftrace_page and struct dyn_ftrace."""

    next: int
    records: int
    index: int
    ip: int
    flags: int
    record_size: int


def layout(btf: Btf) -> RecordLayout:
    offsets = [btf.member_offset("ftrace_page", m) for m in ("next", "records", "index")]
    ip, flags = (btf.member_offset("dyn_ftrace", m) for m in ("ip", "flags"))
    size = btf.struct_size("dyn_ftrace")
    nxt, records, index = offsets
    if None in (nxt, records, index, ip, flags) or not size:
        raise KernelAccessError("vmlinux BTF", "no struct ftrace_page/dyn_ftrace (no ftrace)")
    assert nxt is not None and records is not None and index is not None
    assert ip is not None and flags is not None
    return RecordLayout(nxt, records, index, ip, flags, size)


# REX.W (r64 or r8-r15), MOV r64, r/m64, ModRM mod=00 rm=101 (RIP+disp32), then the disp32:
# one regex search (a byte loop in Python costs tens of microseconds per function read).
_RIP_LOAD = re.compile(rb"[\x48\x4c]\x8b[\x05\x0d\x15\x1d\x25\x2d\x35\x3d](.{4})", re.DOTALL)


def first_rip_load(code: bytes, address: int) -> int | None:
    """The address the first `mov r64, qword [rip+disp32]` in `code` (at `address`) loads."""
    return rip_load_in(code, 0, len(code), address)


def rip_load_in(buffer: bytes, start: int, end: int, address: int) -> int | None:
    """first_rip_load of buffer[start:end] (code at `address`), without copying the slice."""
    found = _RIP_LOAD.search(buffer, start, end)
    if found is None:
        return None
    disp = int.from_bytes(found.group(1), "little", signed=True)
    return (address + found.end() - start + disp) & ((1 << 64) - 1)


def variable_address(
    kernel: Kernel, memory: KernelMemory, name: str, reader: str, code_size: int, what: str
) -> tuple[int, str]:
    """(&`name`, how it was found): from kallsyms where it lists data symbols, else from the
    first RIP-relative load of `reader`, a function that reads it (no CONFIG_KALLSYMS_ALL)."""
    address = kernel.symbol_address(name)
    if address is not None:
        return address, name
    start = kernel.symbol_address(reader)
    if start is None:
        raise KernelAccessError(what, f"neither {name} nor {reader} is in kallsyms")
    address = first_rip_load(memory.read(start, code_size), start)
    if address is None:
        raise KernelAccessError(what, f"{reader} loads no variable")
    return address, f"{name} (read from {reader}'s first load)"


# FTRACE_FL_DISABLED (include/linux/ftrace.h, bit 25 since 4.x): a record ftrace will never
# enable, such as the site of an overridden __weak function whose code the linker kept without
# a symbol (kallsyms names that address as the end of the function before it).
FL_DISABLED = 1 << 25


@dataclass(frozen=True)
class Records:
    """Every record's site, and the sites of records ftrace disabled."""

    sites: list[int]
    disabled: frozenset[int]


def _page(raw: bytes, offsets: RecordLayout) -> tuple[list[int], list[int]]:
    """(ip, flags) of each record of one page: unsigned longs, read as a word array at C speed
    (48k records a scan) where the layout is word-aligned, as on x86-64."""
    size, ip, flags = offsets.record_size, offsets.ip, offsets.flags
    if size % 8 == 0 and ip % 8 == 0 and flags % 8 == 0 and sys.byteorder == "little":
        words = memoryview(raw).cast("Q")
        return list(words[ip // 8 :: size // 8]), list(words[flags // 8 :: size // 8])
    starts = range(0, len(raw), size)
    return (
        [int.from_bytes(raw[at + ip : at + ip + 8], "little") for at in starts],
        [int.from_bytes(raw[at + flags : at + flags + 8], "little") for at in starts],
    )


def site_addresses(memory: KernelMemory, head: int, offsets: RecordLayout) -> list[int]:
    """The `ip` of every record on the list whose head pointer is at `head`."""
    return sites_of(memory, head, offsets).sites


def sites_of(memory: KernelMemory, head: int, offsets: RecordLayout) -> Records:
    """Every record on the list whose head pointer is at `head`, and which are disabled."""
    sites: list[int] = []
    disabled: list[int] = []
    page, pages = read_u64(memory, head), 0
    while page:
        pages += 1
        if page < KERNEL_SPACE or pages > MAX_PAGES:
            raise KernelAccessError(f"ftrace pages at {head:#x}", f"implausible page {page:#x}")
        records = read_u64(memory, page + offsets.records)
        count = read_u32(memory, page + offsets.index)
        if count > MAX_RECORDS or (count and records < KERNEL_SPACE):
            raise KernelAccessError(f"ftrace page {page:#x}", f"{count} records at {records:#x}")
        raw = memory.read(records, count * offsets.record_size) if count else b""
        ips, flags = _page(raw, offsets)
        sites += ips
        disabled += compress(ips, map(and_, flags, repeat(FL_DISABLED)))  # C speed: 48k records
        page = read_u64(memory, page + offsets.next)
    return Records(sites, frozenset(disabled))


def site_function(names: Attributor, ip: int) -> tuple[str, str | None]:
    """(function, module) whose ftrace site `ip` is: at its start, or after its ENDBR64 under
    IBT (+0x4), named as enabled_functions prints it; else the address named by bounds."""
    loc = names.lookup(ip)
    if loc is None or loc.offset not in (0, 4):
        return names.name(ip), None
    return loc.symbol.name, loc.symbol.module
