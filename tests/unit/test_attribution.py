"""Attribution by bounds (kernel/attribution.py): a symbol names an address only inside its
extent and its owner's memory; anything else is memory of no listed module, with the vmalloc
allocation that holds it and the hidden module whose struct module points at it.

The core kallsyms lines are copied from /proc/kallsyms of the 6.18.44-fc machine (text at
0xffffffff81000000); the module lines, their ranges and the vmallocinfo lines follow what the
Debian 6.1 lab guest showed when a rootkit's hooks were named after innocent modules
(`vp_pinned+0x29e0 [9pnet_virtio]`, `ftrace_trampoline+0x24b0 [__builtin__ftrace]`); struct
module is laid out with the offsets of the 6.18 vmlinux BTF fixture.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.integrity.explain import ChangedRun, SiteIndex, explain
from patchguard.kernel.attribution import (
    Attributor,
    core_ranges,
    hidden_finder,
    struct_module_in,
)
from patchguard.kernel.btf import Btf
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.module_layout import MemoryLayout, memory_layout
from patchguard.kernel.vmallocinfo import parse_vmallocinfo

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff816bab60 T __pfx_vfs_read
ffffffff816bab70 T vfs_read
ffffffff816bad10 T __pfx_vfs_write
ffffffff816bad20 T vfs_write
ffffffff822057f0 T __x86_return_thunk
ffffffff8220bb08 T _etext
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0400000 t virtio_pci_probe\t[virtio_pci]
ffffffffc0403a00 t force_legacy\t[virtio_pci]
ffffffffc0410000 t p9_virtio_create\t[9pnet_virtio]
ffffffffc0412100 t vp_pinned\t[9pnet_virtio]
"""

# struct module's record of each listed module's memory (6.4+: text, data, rodata, ...)
MODULES = {
    "virtio_pci": [(0xFFFFFFFFC0400000, 0xFFFFFFFFC0404000)],
    "9pnet_virtio": [(0xFFFFFFFFC0410000, 0xFFFFFFFFC0413000)],
}
VMALLOCINFO = """\
0xffffffffc0201000-0xffffffffc0203000    8192 ftrace_trampoline_alloc+0x8c/0x260 pages=1
0xffffffffc0400000-0xffffffffc0405000   20480 module_memory_alloc+0x2f/0x60 pages=4 vmalloc
0xffffffffc0410000-0xffffffffc0414000   16384 module_memory_alloc+0x2f/0x60 pages=3 vmalloc
0xffffffffc0414000-0xffffffffc0416000    8192 module_alloc+0x3a/0x50 pages=1 vmalloc
0xffffffffc0420000-0xffffffffc0424000   16384 module_memory_alloc+0x2f/0x60 pages=3 vmalloc
0xffffffffc0430000-0xffffffffc0432000    8192 module_memory_alloc+0x2f/0x60 pages=1 vmalloc
"""
STUBS = 0xFFFFFFFFC0414000  # khook-style stubs: allocated by the rootkit, no module's
HIDDEN_TEXT = 0xFFFFFFFFC0420000  # text of a module that took itself off the list
HIDDEN_DATA = 0xFFFFFFFFC0430000  # its data: where its struct module lies from 6.4


@pytest.fixture(scope="module")
def offsets() -> tuple[MemoryLayout, int]:
    btf = Btf.parse(gzip.decompress(VMLINUX.read_bytes()))
    name_at = btf.member_offset("module", "name")
    assert name_at is not None
    return memory_layout(btf), name_at


def _hidden_memory(offsets: tuple[MemoryLayout, int]) -> Image:
    """The hidden module's data allocation holding its struct module, mem[MOD_TEXT] first."""
    layout, name_at = offsets
    data = bytearray(0x2000)
    at = 0x100  # struct module's place in the allocation
    data[at + name_at : at + name_at + 9] = b"pg_hidden"
    base_at, size_at = layout.ranges[0]
    struct.pack_into("<Q", data, at + base_at, HIDDEN_TEXT)
    struct.pack_into("<I", data, at + size_at, 0x3000)
    image = Image()
    image.put(HIDDEN_DATA, bytes(data))
    image.put(HIDDEN_TEXT, bytes(0x4000))
    image.put(STUBS, bytes(0x2000))
    return image


@pytest.fixture(scope="module")
def names(offsets: tuple[MemoryLayout, int]) -> Attributor:
    symbols = SymbolTable.parse(KALLSYMS)
    areas = parse_vmallocinfo(VMALLOCINFO)
    owned = [r for rs in MODULES.values() for r in rs]
    finder = hidden_finder(_hidden_memory(offsets), *offsets, areas, owned)
    return Attributor(symbols, core_ranges(symbols), MODULES, areas, finder)


def test_inside_a_symbols_extent_it_names_the_symbol(names: Attributor) -> None:
    assert names.name(0xFFFFFFFF816BAB74) == "vfs_read+0x4"
    assert names.name(0xFFFFFFFF816BAD1F) == "__pfx_vfs_write+0xf"  # last byte before the next
    assert names.name(0xFFFFFFFFC0412110) == "vp_pinned+0x10 [9pnet_virtio]"
    assert names.attribute(0xFFFFFFFFC0412110).module == "9pnet_virtio"


def test_past_the_core_kernels_end_no_core_symbol_is_blamed(names: Attributor) -> None:
    assert names.lookup(0xFFFFFFFF8220BB07) is not None  # last byte of text
    past = names.attribute(0xFFFFFFFF8220BB08)
    assert past.location is None
    assert str(past).startswith("0xffffffff8220bb08 (memory of no listed module")


def test_just_past_a_modules_end_is_memory_of_no_listed_module(names: Attributor) -> None:
    # the last byte 9pnet_virtio's struct module records, then the first byte after it
    assert names.name(0xFFFFFFFFC0412FFF) == "vp_pinned+0xeff [9pnet_virtio]"
    stub = names.attribute(0xFFFFFFFFC04129E0 + 0x1000)
    assert stub.location is None and stub.module is None
    assert stub.allocation is not None and stub.allocation.start == 0xFFFFFFFFC0410000
    # the khook stubs lie in their own allocation, past the module's last symbol too
    hook = names.attribute(STUBS + 0x10)
    assert str(hook) == (
        "0xffffffffc0414010 (memory of no listed module; "
        "vmalloc 0xffffffffc0414000+0x2000 by module_alloc)"
    )


def test_in_a_gap_between_allocations_it_says_so(names: Attributor) -> None:
    gap = names.attribute(0xFFFFFFFFC0418000)
    assert gap.location is None and gap.allocation is None
    assert str(gap).endswith("in no vmalloc allocation)")


def test_a_pseudo_modules_symbol_ends_with_its_allocation(names: Attributor) -> None:
    assert names.name(0xFFFFFFFFC0201010) == "ftrace_trampoline+0x10 [__builtin__ftrace]"
    assert names.lookup(0xFFFFFFFFC0201000 + 0x24B0) is None


def test_a_hidden_modules_struct_module_names_its_memory(names: Attributor) -> None:
    found = names.attribute(HIDDEN_TEXT + 0x1234)
    assert found.location is None
    assert found.hidden_module == found.module == "pg_hidden"
    assert "in memory of hidden module pg_hidden" in str(found)


def test_a_struct_module_with_a_garbage_name_is_no_module(
    offsets: tuple[MemoryLayout, int],
) -> None:
    layout, name_at = offsets
    image = _hidden_memory(offsets)
    area = parse_vmallocinfo(VMALLOCINFO)[5]
    assert struct_module_in(image, layout, name_at, area, HIDDEN_TEXT) == "pg_hidden"
    assert struct_module_in(image, layout, name_at, area, STUBS) is None


def test_without_allocations_it_says_they_are_not_visible() -> None:
    symbols = SymbolTable.parse(KALLSYMS)
    names = Attributor(symbols, core_ranges(symbols), MODULES, None)
    assert names.name(STUBS) == (
        "0xffffffffc0414000 (memory of no listed module; its allocation is not visible: "
        "vmallocinfo unreadable or hashed)"
    )
    # a module whose memory nobody records is not taken at its word
    unrecorded = Attributor(symbols, core_ranges(symbols), {}, None)
    assert unrecorded.lookup(0xFFFFFFFFC0412110) is None


def test_check_names_a_jump_into_a_stub_as_scan_does(names: Attributor) -> None:
    # a khook-style JMP written over vfs_write's entry NOP into the stub allocation
    site = 0xFFFFFFFF816BAD20
    old = bytes.fromhex("0f1f440000") + b"\x90" * 11
    rel = (STUBS + 0x40) - (site + 5)
    new = b"\xe9" + struct.pack("<i", rel) + b"\x90" * 11
    verdict = explain([ChangedRun(site, old[:5], new[:5], b"", old[5:])], SiteIndex(), names)[0]
    assert not verdict.explained
    assert verdict.location == "vfs_write+0x0"
    assert "jumps to 0xffffffffc0414040 (memory of no listed module; vmalloc" in (
        verdict.explanation
    )


def test_a_bpf_symbol_holds_only_what_the_kernel_says_it_does() -> None:
    symbols = SymbolTable.parse(
        KALLSYMS + "ffffffffc0000a40 t bpf_prog_e5931d05be3e301d_x\t[bpf]\n"
    )
    said = {0xFFFFFFFFC0000A48: "bpf_prog_e5931d05be3e301d_x"}  # %pS: within its size
    names = Attributor(symbols, core_ranges(symbols), MODULES, None, kernel_name=said.get)
    assert names.name(0xFFFFFFFFC0000A48) == "bpf_prog_e5931d05be3e301d_x+0x8 [bpf]"
    assert names.lookup(0xFFFFFFFFC0023580) is None  # past the program: %pS names nothing


def test_an_ftrace_trampoline_or_kprobe_page_is_one_page_without_allocations() -> None:
    symbols = SymbolTable.parse(
        KALLSYMS + "ffffffffc0205000 t optinsn_slot\t[__builtin__kprobes]\n"
    )
    names = Attributor(symbols, core_ranges(symbols), MODULES, None, kernel_name=lambda a: None)
    assert names.name(0xFFFFFFFFC0201010) == "ftrace_trampoline+0x10 [__builtin__ftrace]"
    assert names.lookup(0xFFFFFFFFC0201000 + 0x24B0) is None
    assert names.name(0xFFFFFFFFC0205040) == "optinsn_slot+0x40 [__builtin__kprobes]"
