"""Each loaded module as kernel memory holds it: the `modules` list (found from the first load
of a function that walks it, verified by walking it), each `struct module`'s name, its own
symbol table (`core_kallsyms`: symtab, num_symtab, strtab, typetab, which /proc/kallsyms
prints from), and whether its kobject is still on module_kset's list (what /sys/module lists).

Ground truth for two text views: /proc/kallsyms (a filter can drop a module's symbols from
what a process reads) and the /sys/module directory (a getdents filter can drop an entry that
still opens by name; kobject_del takes the directory away for real). Offsets from vmlinux BTF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_records import first_rip_load
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64
from patchguard.kernel.module_layout import MODULE_NAME_LEN, plausible_name

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

MAX_MODULES = 4096
MAX_SYMBOLS = 1 << 17  # symbols of one module (the largest have tens of thousands)
MAX_STRTAB = 1 << 22  # bytes of one module's string table read
KSYM_NAME_LEN = 512
ELF64_SYM = 24  # Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16, value, size
# Functions that walk `modules` first thing: its first 64-bit load is the list's first node.
READERS = ("find_module", "module_get_kallsym", "print_modules", "__module_address")
READ_CODE = 96


@dataclass(frozen=True)
class ModuleLayout:
    list: int
    name: int
    kallsyms: int  # struct mod_kallsyms core_kallsyms
    symtab: int
    num_symtab: int
    strtab: int
    typetab: int
    kobj_entry: int  # mkobj.kobj.entry, from the struct module


def layout(btf: Btf) -> ModuleLayout:
    need = btf.required_offset

    mkobj = need("module", "mkobj") + need("module_kobject", "kobj") + need("kobject", "entry")
    return ModuleLayout(
        need("module", "list"),
        need("module", "name"),
        need("module", "core_kallsyms"),
        need("mod_kallsyms", "symtab"),
        need("mod_kallsyms", "num_symtab"),
        need("mod_kallsyms", "strtab"),
        need("mod_kallsyms", "typetab"),
        mkobj,
    )


@dataclass(frozen=True)
class ModuleInMemory:
    address: int  # struct module
    name: str
    symbols: tuple[tuple[str, str], ...]  # (name, kallsyms type letter) of its own table
    in_kset: bool  # its kobject is linked on module_kset's list


def modules_head(kernel: Kernel, memory: KernelMemory, at: ModuleLayout) -> tuple[int, str]:
    """(&modules, how it was found): kallsyms where it lists data, else the first load of the
    first reader whose answer is a list of struct modules with names."""
    address = kernel.symbol_address("modules")
    if address is not None and _walks(memory, address, at):
        return address, "modules"
    for reader in READERS:
        start = kernel.symbol_address(reader)
        if start is None:
            continue
        found = first_rip_load(memory.read(start, READ_CODE), start)
        if found is not None and _walks(memory, found, at):
            return found, f"modules (read from {reader}'s first load)"
    raise KernelAccessError("module list", f"no list of modules at the first load of {READERS}")


def _walks(memory: KernelMemory, head: int, at: ModuleLayout) -> bool:
    try:
        walk_modules(memory, head, at)
    except KernelAccessError:
        return False
    return True


def walk_modules(memory: KernelMemory, head: int, at: ModuleLayout) -> list[int]:
    """The struct module of every node on the list at `head`; KernelAccessError when it is
    not a list of named modules."""
    found: list[int] = []
    node = read_u64(memory, head)
    while node != head:
        if node < KERNEL_SPACE or len(found) > MAX_MODULES:
            raise KernelAccessError(f"module list at {head:#x}", f"implausible node {node:#x}")
        module = node - at.list
        if plausible_name(memory.read(module + at.name, MODULE_NAME_LEN)) is None:
            raise KernelAccessError(f"module list at {head:#x}", f"no module at {module:#x}")
        found.append(module)
        node = read_u64(memory, node)
    return found


def read_module(memory: KernelMemory, module: int, at: ModuleLayout) -> ModuleInMemory:
    name = plausible_name(memory.read(module + at.name, MODULE_NAME_LEN)) or f"{module:#x}"
    return ModuleInMemory(module, name, symbols(memory, module, at), _in_kset(memory, module, at))


def symbols(memory: KernelMemory, module: int, at: ModuleLayout) -> tuple[tuple[str, str], ...]:
    """(name, type) of every named entry of the module's own core symbol table."""
    table = module + at.kallsyms
    count = read_u32(memory, table + at.num_symtab)
    if count > MAX_SYMBOLS:
        raise KernelAccessError(f"module {module:#x}", f"{count} symbols")
    if not count:
        return ()
    symtab, strtab, typetab = (
        read_u64(memory, table + o) for o in (at.symtab, at.strtab, at.typetab)
    )
    raw = memory.read(symtab, count * ELF64_SYM)
    offsets = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), ELF64_SYM)]
    size = min(max(offsets) + KSYM_NAME_LEN, MAX_STRTAB)
    strings, types = _tail_read(memory, strtab, size), memory.read(typetab, count)
    out = []
    for i, off in enumerate(offsets):
        name = (
            strings[off : strings.find(b"\0", off)].decode(errors="replace")
            if off < len(strings)
            else ""
        )
        if name:
            out.append((name, chr(types[i])))
    return tuple(out)


def _tail_read(memory: KernelMemory, address: int, size: int) -> bytes:
    """Up to `size` bytes at `address`: a string table may end before the page after it."""
    try:
        return memory.read(address, size)
    except KernelAccessError:
        end = (address + size) & ~0xFFF
        return memory.read(address, max(end - address, 1))


def _in_kset(memory: KernelMemory, module: int, at: ModuleLayout) -> bool:
    """The kobject's list entry is linked: both neighbours point back at it (kobject_del
    unlinks it and leaves it pointing at itself)."""
    node = module + at.kobj_entry
    nxt, prev = read_u64(memory, node), read_u64(memory, node + 8)
    if nxt == node or min(nxt, prev) < KERNEL_SPACE:
        return False
    return read_u64(memory, nxt + 8) == node and read_u64(memory, prev) == node
