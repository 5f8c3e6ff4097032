"""Where each loaded module's code and patch-site tables are: read from its `struct module`
through vmlinux BTF and the memory reader.

/proc/modules gives a module's base and total size, not where its text ends; sysfs gives
section starts, not sizes. The loader's own record does: before 6.4 `core_layout` (a `struct
module_layout`: base, size, text_size, ...: text comes first, page-aligned); from 6.4
`mem[MOD_TEXT]` (a `struct module_memory`, MOD_TEXT = 0). The module's jump table and static
call sites are `jump_entries`/`num_jump_entries` and `static_call_sites`/
`num_static_call_sites`: the same entry formats as the core kernel's tables.

A module's `struct module` is its `__this_module` symbol in kallsyms (a data symbol: listed
with CONFIG_KALLSYMS_ALL), else the address of its section .gnu.linkonce.this_module in
/sys/module/<name>/sections/. Every value read is checked against what it must be (the name in
the struct, a kernel address, a sane size) before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64

if TYPE_CHECKING:  # the BTF parser only where a layout is derived (a check reads its baseline's)
    from patchguard.kernel.btf import Btf

MODULE_NAME_LEN = 56  # MODULE_NAME_LEN: 64 - sizeof(unsigned long)
MAX_TEXT = 256 << 20  # no module has 256 MiB of code: a bigger value is a misread
MAX_ENTRIES = 1 << 20
JUMP_ENTRY_SIZE = 16  # x86-64 struct jump_entry: s32 code, s32 target, long key
STATIC_CALL_SITE_SIZE = 8  # struct static_call_site: s32 addr, s32 key


@dataclass(frozen=True)
class ModuleText:
    name: str
    module: int  # address of its struct module
    text: int  # first byte of its (core) text
    text_size: int
    jump_table: int  # address of its jump entries (0: none)
    jump_entries: int
    static_call_sites: int
    static_call_count: int

    @property
    def jump_table_size(self) -> int:
        return self.jump_entries * JUMP_ENTRY_SIZE

    @property
    def static_call_size(self) -> int:
        return self.static_call_count * STATIC_CALL_SITE_SIZE


@dataclass(frozen=True)
class Layout:
    """Offsets in struct module (vmlinux BTF) of what is read here."""

    name: int
    text_base: int  # core_layout.base or mem[MOD_TEXT].base
    text_size: int  # core_layout.text_size or mem[MOD_TEXT].size (unsigned int in both)
    jump_entries: int | None
    num_jump_entries: int | None
    static_call_sites: int | None
    num_static_call_sites: int | None

    @property
    def span(self) -> int:
        """Bytes of struct module from its start to the end of the last field read here."""
        fields = (self.jump_entries, self.static_call_sites, self.text_base)
        counts = (self.num_jump_entries, self.num_static_call_sites, self.text_size)
        ends = [at + 8 for at in fields if at is not None]
        ends += [at + 4 for at in counts if at is not None]
        return max(self.name + MODULE_NAME_LEN, *ends)


def layout(btf: Btf) -> Layout:
    name = btf.member_offset("module", "name")
    mem = btf.member_offset("module", "mem")
    core = btf.member_offset("module", "core_layout")
    if name is None:
        raise KernelAccessError("vmlinux BTF", "no struct module.name")
    if mem is not None:  # 6.4+: mem[MOD_TEXT], MOD_TEXT == 0
        base, size = (btf.member_offset("module_memory", m) for m in ("base", "size"))
    elif core is not None:
        mem = core
        base, size = (btf.member_offset("module_layout", m) for m in ("base", "text_size"))
    else:
        raise KernelAccessError("vmlinux BTF", "struct module has neither mem nor core_layout")
    if base is None or size is None:
        raise KernelAccessError("vmlinux BTF", "the module text's base or size is not in BTF")
    return Layout(
        name=name,
        text_base=mem + base,
        text_size=mem + size,
        jump_entries=btf.member_offset("module", "jump_entries"),
        num_jump_entries=btf.member_offset("module", "num_jump_entries"),
        static_call_sites=btf.member_offset("module", "static_call_sites"),
        num_static_call_sites=btf.member_offset("module", "num_static_call_sites"),
    )


def struct_module_address(sysfs_text: str | None) -> int | None:
    """A struct module's address from /sys/module/<name>/sections/.gnu.linkonce.this_module,
    for a module whose `__this_module` kallsyms does not list."""
    if not sysfs_text:
        return None
    try:
        return int(sysfs_text.strip(), 16) or None
    except ValueError:
        return None


def _u64(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 8], "little")


def _u32(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 4], "little")


def _table(raw: bytes, at: int | None, count: int | None, what: str) -> tuple[int, int]:
    if at is None or count is None:  # kernel built without jump labels or static calls
        return 0, 0
    address, n = _u64(raw, at), _u32(raw, count)
    if n and (address < KERNEL_SPACE or n > MAX_ENTRIES):
        raise KernelAccessError("struct module", f"implausible {what}: {n} at {address:#x}")
    return (address, n) if n else (0, 0)


def read_module(memory: KernelMemory, offsets: Layout, name: str, module: int) -> ModuleText:
    """The text and tables of the module whose struct module is at `module`: one read of the
    struct up to its last field used (a check reads every module's: one BPF run each, not
    seven)."""
    return parse_module(memory.read(module, offsets.span), offsets, name, module)


def parse_module(raw: bytes, offsets: Layout, name: str, module: int) -> ModuleText:
    """The text and tables of the module `name` from `raw`, its struct module (at `module`)
    up to offsets.span, each value checked before it is used."""
    where = f"struct module of {name} at {module:#x}"
    raw_name = raw[offsets.name : offsets.name + MODULE_NAME_LEN]
    if raw_name.split(b"\0", 1)[0].decode(errors="replace") != name:
        raise KernelAccessError(where, "its name field does not name it: not a struct module")
    text, size = _u64(raw, offsets.text_base), _u32(raw, offsets.text_size)
    if text < KERNEL_SPACE or not 0 < size <= MAX_TEXT:
        raise KernelAccessError(where, f"implausible text: {size} bytes at {text:#x}")
    jump, jumps = _table(raw, offsets.jump_entries, offsets.num_jump_entries, "jump table")
    calls, ncalls = _table(
        raw, offsets.static_call_sites, offsets.num_static_call_sites, "static call sites"
    )
    return ModuleText(name, module, text, size, jump, jumps, calls, ncalls)


MOD_MEM_NUM_TYPES = 7  # 6.4+: text, data, rodata, ro_after_init, init text, init data, init rodata


@dataclass(frozen=True)
class MemoryLayout:
    """Where in struct module each of its memory ranges is: (offset of base, offset of the
    unsigned int size) per range: mem[0..7) from 6.4, core_layout and init_layout before."""

    ranges: tuple[tuple[int, int], ...]


def memory_layout(btf: Btf) -> MemoryLayout:
    mem = btf.member_offset("module", "mem")
    if mem is not None:
        base, size = (btf.member_offset("module_memory", m) for m in ("base", "size"))
        stride = btf.struct_size("module_memory")
        if base is None or size is None or not stride:
            raise KernelAccessError("vmlinux BTF", "struct module_memory has no base or size")
        at = [mem + i * stride for i in range(MOD_MEM_NUM_TYPES)]
        return MemoryLayout(tuple((a + base, a + size) for a in at))
    base, size = (btf.member_offset("module_layout", m) for m in ("base", "size"))
    layouts = [btf.member_offset("module", m) for m in ("core_layout", "init_layout")]
    if base is None or size is None or None in layouts:
        raise KernelAccessError("vmlinux BTF", "struct module has neither mem nor core_layout")
    return MemoryLayout(tuple((a + base, a + size) for a in layouts if a is not None))


def memory_ranges(
    memory: KernelMemory, offsets: MemoryLayout, module: int
) -> tuple[tuple[int, int], ...]:
    """The [start, end) ranges of the module's memory its struct module at `module` records
    (empty ones, such as a live module's freed init memory, left out)."""
    found = []
    for base_at, size_at in offsets.ranges:
        base, size = read_u64(memory, module + base_at), read_u32(memory, module + size_at)
        if size and base >= KERNEL_SPACE and size <= MAX_TEXT:
            found.append((base, base + size))
    return tuple(sorted(found))


def plausible_name(raw: bytes) -> str | None:
    """A struct module's name field: printable, NUL-terminated, not empty."""
    name = raw.split(b"\0", 1)[0]
    if not name or len(name) == len(raw) or not all(0x21 <= b < 0x7F for b in name):
        return None
    return name.decode()
