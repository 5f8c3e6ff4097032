"""Every tracepoint of the running kernel read from memory, with the probes registered on it:
the core kernel's found from their iterators' code, each module's from its `struct module`.

No data symbol is needed. Each core tracepoint has a text symbol `__traceiter_<name>` whose
first RIP-relative load is `__tracepoint_<name>.funcs`, so the struct lies at that address
minus offsetof(struct tracepoint, funcs); it is taken only if its `iterator` member points
back at that same function (one search of kallsyms: the trampolines need not be looked up). A
module's tracepoints are listed by its own `struct module` (tracepoints_ptrs, num_tracepoints:
x86-64 stores them as 32-bit offsets from each entry, CONFIG_HAVE_ARCH_PREL32_RELOCATIONS),
read for every module on the kernel's module list in memory, so a module a text view hides
still has its tracepoints read. Reads are grouped: the iterators' code and the core structs
lie close together, a few page-sized reads cover them all.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_records import rip_load_in
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64
from patchguard.kernel.tracepoints import (
    ITERATOR_PREFIX,
    Layout,
    Tracepoint,
    TracepointReader,
    read_probes,
)

_U64 = struct.Struct("<Q")
CODE = 48  # bytes of an iterator read for its first load (past endbr, the ftrace NOP, pushes)
GAP = 4096  # addresses closer than this share one read
MAX_SPAN = 256 << 10  # bytes of one grouped read
MAX_TRACEPOINTS = 1 << 14  # of one module


@dataclass(frozen=True)
class ModuleTracepoints:
    """The tracepoints a module's own struct module lists."""

    module: str
    tracepoints: tuple[Tracepoint, ...]


def spans(addresses: Iterable[int], size: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges covering `size` bytes at each address, near ones merged."""
    start = end = -1
    for at in sorted(set(addresses)):
        if start >= 0 and at - end < GAP and at + size - start <= MAX_SPAN:
            end = max(end, at + size)
            continue
        if start >= 0:
            yield start, end
        start, end = at, at + size
    if start >= 0:
        yield start, end


def read_grouped(
    memory: KernelMemory, addresses: Sequence[int], size: int
) -> Iterator[tuple[int, bytes, int]]:
    """(address, buffer, offset): `size` bytes at each address lie at buffer[offset:], read
    in grouped reads (no copy per address); an address whose group cannot be read is read
    alone, and left out where that fails too."""
    ordered = sorted(set(addresses))
    for start, end in spans(ordered, size):
        try:
            raw = memory.read(start, end - start)
        except KernelAccessError:
            raw = b""
        for at in ordered[bisect.bisect_left(ordered, start) : bisect.bisect_left(ordered, end)]:
            if at - start + size <= len(raw):
                yield at, raw, at - start
            elif alone := _alone(memory, at, size):
                yield at, alone, 0


def _alone(memory: KernelMemory, address: int, size: int) -> bytes:
    try:
        return memory.read(address, size)
    except KernelAccessError:
        return b""


def core_tracepoints(
    memory: KernelMemory, lay: Layout, iterators: Mapping[str, int]
) -> list[Tracepoint]:
    """Every core tracepoint whose iterator leads to a struct that points back at it.

    `iterators`: tracepoint name -> address of its `__traceiter_` text symbol."""
    if lay.iterator is None:
        raise KernelAccessError("vmlinux BTF", "struct tracepoint has no iterator (before 5.10)")
    names = {start: name for name, start in iterators.items()}
    at: dict[int, str] = {}
    for start, raw, off in read_grouped(memory, list(names), CODE):
        load = rip_load_in(raw, off, off + CODE, start)
        if load is not None and load >= KERNEL_SPACE:
            at[load - lay.funcs] = names[start]
    check = lay.iterator
    return [
        _proven(memory, lay, address, at[address], raw, off)
        for address, raw, off in read_grouped(memory, list(at), lay.size)
        if _U64.unpack_from(raw, off + check)[0] == iterators[at[address]]
    ]


def _proven(
    memory: KernelMemory, lay: Layout, address: int, name: str, raw: bytes, off: int
) -> Tracepoint:
    """The tracepoint, with its probes where it has any (most have none: nothing read)."""
    funcs = _U64.unpack_from(raw, off + lay.funcs)[0]
    sck = _U64.unpack_from(raw, off + lay.static_call_key)[0] if lay.static_call_key else None
    try:
        entries = read_probes(memory, lay, funcs) if funcs else ()
    except KernelAccessError:
        entries = ()  # freed under us (probes changing): read as none, as a moment later
    return Tracepoint(address, name, sck, entries)


def iterator_names(symbols: Iterable[tuple[str, int]]) -> dict[str, int]:
    """name -> address of each core `__traceiter_<name>` (symbols: (name, address))."""
    return {n.removeprefix(ITERATOR_PREFIX): a for n, a in symbols if n.startswith(ITERATOR_PREFIX)}


@dataclass(frozen=True)
class ModuleOffsets:
    tracepoints_ptrs: int
    num_tracepoints: int


def module_offsets(btf: Btf) -> ModuleOffsets | None:
    """Where struct module keeps its tracepoints; None on kernels built without them."""
    ptrs = btf.member_offset("module", "tracepoints_ptrs")
    count = btf.member_offset("module", "num_tracepoints")
    return ModuleOffsets(ptrs, count) if ptrs is not None and count is not None else None


def module_tracepoints(
    memory: KernelMemory, lay: Layout, at: ModuleOffsets, module: int
) -> list[Tracepoint]:
    """The tracepoints the struct module at `module` lists, each named by its own name
    field (a module's trampolines are in kallsyms only while it is listed there)."""
    count = read_u32(memory, module + at.num_tracepoints)
    table = read_u64(memory, module + at.tracepoints_ptrs)
    if not count or table < KERNEL_SPACE:
        return []
    if count > MAX_TRACEPOINTS:
        raise KernelAccessError(f"struct module {module:#x}", f"{count} tracepoints")
    raw = memory.read(table, 4 * count)
    reader = TracepointReader(memory, lay, {})
    found = []
    for i in range(count):
        offset = int.from_bytes(raw[4 * i : 4 * i + 4], "little", signed=True)
        tp = reader.named_at(table + 4 * i + offset)
        if tp is not None:
            found.append(tp)
    return found
