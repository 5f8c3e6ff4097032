"""Attribution by bounds: which code an address belongs to, the one answer scan and check give.

kallsyms carries no sizes, so "the nearest symbol below" names every address, however far past
the symbol's end: a hook stub in memory of a hidden module, or in an allocation no module
owns, came out as `vp_pinned+0x29e0 [9pnet_virtio]`, blaming an innocent module. Here a symbol
names an address only if the address lies in that symbol's extent: up to the next symbol, and
inside the same memory range of its owner, as the owner's own record says: core kernel symbols
within the kernel image, a module's within the ranges its `struct module` records (read
through vmlinux BTF and the memory reader; /proc/modules' base and size where that cannot be
read), the kernel's pseudo modules ([bpf], [__builtin__ftrace]) within the vmalloc allocation
their symbol starts in. Any other address is "memory of no listed module", named by the vmalloc
allocation that holds it (/proc/vmallocinfo: start, size, caller) and, where a `struct module`
pointing at that allocation can be found in the loader's memory no listed module owns, by the
name of the hidden module it belongs to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kallsyms import (
    PSEUDO_MODULES,
    RANGE_SYMBOLS,
    AddressRange,
    Location,
    Symbol,
    SymbolTable,
)
from patchguard.kernel.memory import KernelMemory
from patchguard.kernel.module_layout import (
    MAX_TEXT,
    MODULE_NAME_LEN,
    MemoryLayout,
    memory_layout,
    memory_ranges,
    plausible_name,
    struct_module_address,
)
from patchguard.kernel.proc_modules import PROC_MODULES, ProcModule, parse_proc_modules
from patchguard.kernel.vmallocinfo import (
    LOADER_CALLERS,
    VMALLOCINFO,
    VmallocArea,
    area_holding,
    parse_vmallocinfo,
)

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

Range = tuple[int, int]  # [start, end)
HiddenFinder = Callable[[VmallocArea], "str | None"]
KernelNamer = Callable[[int], "str | None"]  # the symbol the kernel's own %pS names, if any
NO_MODULE = "memory of no listed module"
MAX_AREA_READ = 4 << 20  # a struct module is searched for in at most this much of an area
MAX_AREAS_SEARCHED = 64
PAGE = 4096
PAGE_SIZED = frozenset({"__builtin__ftrace", "__builtin__kprobes"})


@dataclass(frozen=True)
class Attribution:
    """Who an address belongs to: a symbol whose extent holds it, else the allocation."""

    address: int
    location: Location | None
    allocation: VmallocArea | None = None
    hidden_module: str | None = None  # the struct module found pointing at the allocation
    allocations_known: bool = True  # False: vmallocinfo could not be read or hashes addresses

    @property
    def module(self) -> str | None:
        return self.location.symbol.module if self.location else self.hidden_module

    def __str__(self) -> str:
        if self.location is not None:
            return str(self.location)
        where = f"{self.address:#x} ({NO_MODULE}"
        if self.hidden_module:
            where += f"; in memory of hidden module {self.hidden_module}"
        if self.allocation is not None:
            return f"{where}; {self.allocation})"
        if not self.allocations_known:
            return f"{where}; its allocation is not visible: vmallocinfo unreadable or hashed)"
        return f"{where}; in no vmalloc allocation)"


def _within(ranges: Sequence[Range], address: int, start: int) -> bool:
    """Both the address and its symbol's start lie in one of the ranges."""
    return any(lo <= address < hi and lo <= start < hi for lo, hi in ranges)


class Attributor:
    """Names addresses by bounds (see the module docstring); satisfies x86.inputs.Symbols."""

    def __init__(
        self,
        symbols: SymbolTable,
        core: Sequence[AddressRange],
        modules: Mapping[str, Sequence[Range]],
        areas: Sequence[VmallocArea] | None,
        find_hidden: HiddenFinder | None = None,
        kernel_name: KernelNamer | None = None,
    ) -> None:
        self.symbols = symbols
        self.core = [(r.start, r.end) for r in core]
        self.modules = dict(modules)
        self.areas = sorted(areas, key=lambda a: a.start) if areas is not None else None
        self._find_hidden = find_hidden
        self._kernel_name = kernel_name
        self._hidden: dict[int, str | None] = {}

    def _covers(self, symbol: Symbol, address: int) -> bool:
        if symbol.module is None:
            return _within(self.core, address, symbol.address)
        ranges = self.modules.get(symbol.module)
        if ranges is not None:
            return _within(ranges, address, symbol.address)
        if symbol.module == "bpf" and self._kernel_name is not None:
            # BPF programs and trampolines: the kernel's %pS knows each one's size
            return self._kernel_name(address) == symbol.name
        area = area_holding(self.areas, address) if self.areas is not None else None
        if area is not None and not (area.start <= symbol.address < area.end):
            return False
        if symbol.module in PAGE_SIZED:
            # an ftrace ops trampoline, a kprobe instruction page: one page each
            return address - symbol.address < PAGE
        # No record of this module's memory: its symbol is taken only inside the allocation
        # it starts in, or (no allocations to bound it) a BPF symbol at its word.
        return area is not None or (symbol.module in PSEUDO_MODULES and self.areas is None)

    def lookup(self, address: int) -> Location | None:
        """The symbol whose extent holds `address`, None if none does."""
        loc = self.symbols.lookup(address)
        return loc if loc is not None and self._covers(loc.symbol, address) else None

    def in_core_text(self, address: int) -> bool:
        return self.symbols.in_core_text(address)

    def attribute(self, address: int) -> Attribution:
        loc = self.lookup(address)
        if loc is not None:
            return Attribution(address, loc)
        if self.areas is None:
            return Attribution(address, None, allocations_known=False)
        area = area_holding(self.areas, address)
        hidden = self._hidden_in(area) if area is not None else None
        return Attribution(address, None, area, hidden)

    def _hidden_in(self, area: VmallocArea) -> str | None:
        if self._find_hidden is None:
            return None
        if area.start not in self._hidden:
            self._hidden[area.start] = self._find_hidden(area)
        return self._hidden[area.start]

    def name(self, address: int) -> str:
        """symbol+offset [module], or the memory of no listed module that holds it."""
        return str(self.attribute(address))


# --- the live kernel's records ------------------------------------------------------------------


def core_ranges(symbols: SymbolTable) -> list[AddressRange]:
    """The kernel image: _stext.._end where kallsyms lists _end (CONFIG_KALLSYMS_ALL), else the
    ranges it does show (text, entry text, rodata, ...)."""
    start, end = symbols.address_of("_stext"), symbols.address_of("_end")
    if start is not None and end is not None and start < end:
        return [AddressRange("image", start, end)]
    return list(symbols.ranges().values())


def struct_modules(kernel: Kernel, names: Sequence[str]) -> dict[str, int]:
    """Each named module's struct module: its __this_module symbol (one search of kallsyms
    for all), else its .gnu.linkonce.this_module section in sysfs."""
    found = {s.module: s.address for s in kernel.kallsyms.find("__this_module") if s.module}
    out = {}
    for name in names:
        address = found.get(name) or _sysfs_struct(kernel, name)
        if address:
            out[name] = address
    return out


def _sysfs_struct(kernel: Kernel, name: str) -> int | None:
    with contextlib.suppress(KernelAccessError):
        path = f"/sys/module/{name}/sections/.gnu.linkonce.this_module"
        return struct_module_address(kernel.read_text(path))
    return None


def _recorded_ranges(
    memory: KernelMemory, offsets: MemoryLayout, name_at: int, name: str, module: int
) -> tuple[Range, ...] | None:
    """The ranges the struct module at `module` records, if its name field names it."""
    try:
        if plausible_name(memory.read(module + name_at, MODULE_NAME_LEN)) != name:
            return None
        return memory_ranges(memory, offsets, module) or None
    except KernelAccessError:
        return None


def module_ranges(kernel: Kernel, listed: Sequence[ProcModule]) -> dict[str, tuple[Range, ...]]:
    """Every listed module's memory ranges: from its struct module where it can be read, else
    /proc/modules' base and size."""
    ranges: dict[str, tuple[Range, ...]] = {
        m.name: ((m.address, m.address + m.size),) for m in listed if m.address
    }
    try:
        memory, btf = kernel.memory(), kernel.vmlinux_btf
        offsets, name_at = memory_layout(btf), btf.member_offset("module", "name")
        structs = struct_modules(kernel, [m.name for m in listed])
    except (KernelAccessError, OSError, ValueError):
        return ranges
    if name_at is None:
        return ranges
    for m in listed:
        address = structs.get(m.name)
        found = _recorded_ranges(memory, offsets, name_at, m.name, address) if address else None
        if found:
            ranges[m.name] = found
    return ranges


def _readable(memory: KernelMemory, area: VmallocArea) -> bytes:
    """The area's bytes, page by page (its guard page and holes read as nothing)."""
    chunks = []
    for at in range(area.start, min(area.end, area.start + MAX_AREA_READ), PAGE):
        try:
            chunks.append(memory.read(at, PAGE))
        except KernelAccessError:
            chunks.append(bytes(PAGE))
    return b"".join(chunks)


def struct_module_in(
    memory: KernelMemory, offsets: MemoryLayout, name_at: int, area: VmallocArea, target: int
) -> str | None:
    """The name of a struct module in `area` that records a memory range starting at
    `target`: every place `target` is stored is tried as one of its base fields."""
    data, needle = _readable(memory, area), target.to_bytes(8, "little")
    hit = data.find(needle)
    while hit >= 0:
        for base_at, size_at in offsets.ranges:
            at = hit - base_at
            if at < 0 or at + max(name_at + MODULE_NAME_LEN, size_at + 4) > len(data):
                continue
            size = int.from_bytes(data[at + size_at : at + size_at + 4], "little")
            name = plausible_name(data[at + name_at : at + name_at + MODULE_NAME_LEN])
            if name and 0 < size <= MAX_TEXT:
                return name
        hit = data.find(needle, hit + 1)
    return None


def hidden_finder(
    memory: KernelMemory,
    offsets: MemoryLayout,
    name_at: int,
    areas: Sequence[VmallocArea],
    owned: Sequence[Range],
) -> HiddenFinder:
    """Finds the struct module of an allocation no listed module owns: in that allocation
    (before 6.4 a module's struct lies in its core allocation), else in the loader's other
    allocations no listed module owns (from 6.4 it lies in the module's data allocation)."""
    loose = [
        a
        for a in areas
        if a.caller in LOADER_CALLERS and not any(a.start <= lo < a.end for lo, _ in owned)
    ]

    def find(area: VmallocArea) -> str | None:
        candidates = [area] + [a for a in loose if a.start != area.start]
        for where in candidates[:MAX_AREAS_SEARCHED]:
            name = struct_module_in(memory, offsets, name_at, where, area.start)
            if name is not None:
                return name
        return None

    return find


def _areas(kernel: Kernel) -> list[VmallocArea] | None:
    """vmallocinfo's allocations; None where it cannot be read or %pK hashes its addresses
    (kptr_restrict=0 hashes them even for root: 1 shows them to CAP_SYSLOG)."""
    try:
        areas = parse_vmallocinfo(kernel.read_text(VMALLOCINFO))
    except KernelAccessError:
        return None
    return areas if areas and all(a.real_addresses for a in areas) else None


def load(kernel: Kernel) -> Attributor:
    """The attributor of the kernel as it is now (kallsyms, module records, allocations)."""
    symbols = kernel.kallsyms
    try:
        listed = parse_proc_modules(kernel.read_text(PROC_MODULES))
    except KernelAccessError:
        listed = []
    ranges, areas = module_ranges(kernel, listed), _areas(kernel)
    finder = None
    if areas is not None:
        with contextlib.suppress(KernelAccessError, OSError, ValueError):
            btf = kernel.vmlinux_btf
            name_at = btf.member_offset("module", "name")
            owned = [r for rs in ranges.values() for r in rs]
            if name_at is not None:
                finder = hidden_finder(kernel.memory(), memory_layout(btf), name_at, areas, owned)
    core = _core(kernel)
    return Attributor(symbols, core, ranges, areas, finder, _kernel_namer(kernel))


def _core(kernel: Kernel) -> list[AddressRange]:
    """The kernel image as the kernel's own lookups give it (a kallsyms view can be cut short),
    else as kallsyms does."""
    start, end = kernel.symbol_address("_stext"), kernel.symbol_address("_end")
    if start is not None and end is not None and start < end:
        return [AddressRange("image", start, end)]
    found = [kernel.range(name) for name in RANGE_SYMBOLS]
    return [r for r in found if r is not None] or core_ranges(kernel.kallsyms)


def _kernel_namer(kernel: Kernel) -> KernelNamer | None:
    """The kernel's own %pS (bpf/symbolize.py), which bounds BPF programs and trampolines by
    their sizes; None where it cannot name addresses."""
    if kernel.symbolizer() is None:
        return None

    def name(address: int) -> str | None:
        named = kernel.names([address]).get(address)
        return named.name if named is not None else None

    return name
