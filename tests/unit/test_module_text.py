"""Module text in the baseline: where a module's code and tables are (kernel.module_layout, read
from struct module over a memory image laid out with the offsets of the vmlinux BTF captured
on the 6.18 "fc" machine), and what `check` says of modules gone, moved or new
(integrity.module_regions). The lab proves it on Debian's 6.1 (core_layout) with a real hook in
ext4's text (tests/lab/test_lab_code_patching.py)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.integrity.module_regions import (
    is_text,
    module_of,
    region_bounds,
    stale_modules,
)
from patchguard.integrity.store import RegionEntry
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.module_layout import (
    Layout,
    ModuleText,
    layout,
    read_module,
    struct_module_address,
)

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
MODULE = 0xFFFFFFFFC0A03000  # struct module of "pg_test"
TEXT = 0xFFFFFFFFC0A00000
JUMPS = 0xFFFFFFFFC0A02000
CALLS = 0xFFFFFFFFC0A02800


@pytest.fixture(scope="module")
def offsets() -> Layout:
    return layout(Btf.parse(gzip.decompress(VMLINUX.read_bytes())))


def test_layout_of_a_6_4_plus_kernel_reads_mem_mod_text(offsets: Layout) -> None:
    # struct module_memory { void *base; bool is_rox; unsigned int size; ... } at module.mem
    assert offsets.text_size == offsets.text_base + 12
    assert offsets.name == 24
    assert None not in (offsets.jump_entries, offsets.num_jump_entries)
    assert None not in (offsets.static_call_sites, offsets.num_static_call_sites)


def image(offsets: Layout, name: bytes = b"pg_test", size: int = 0x2000, jumps: int = 3) -> Image:
    struct_module = bytearray(1024)
    struct_module[offsets.name : offsets.name + len(name)] = name
    struct.pack_into("<Q", struct_module, offsets.text_base, TEXT)
    struct.pack_into("<I", struct_module, offsets.text_size, size)
    assert offsets.jump_entries and offsets.num_jump_entries
    assert offsets.static_call_sites and offsets.num_static_call_sites
    struct.pack_into("<Q", struct_module, offsets.jump_entries, JUMPS)
    struct.pack_into("<I", struct_module, offsets.num_jump_entries, jumps)
    struct.pack_into("<Q", struct_module, offsets.static_call_sites, CALLS)
    struct.pack_into("<I", struct_module, offsets.num_static_call_sites, 0)
    memory = Image()
    memory.put(MODULE, bytes(struct_module))
    return memory


def test_module_text_and_tables_are_read(offsets: Layout) -> None:
    found = read_module(image(offsets), offsets, "pg_test", MODULE)
    assert (found.text, found.text_size) == (TEXT, 0x2000)
    assert (found.jump_table, found.jump_entries, found.jump_table_size) == (JUMPS, 3, 48)
    assert (found.static_call_sites, found.static_call_count) == (0, 0)  # none: no table
    assert region_bounds(found) == [
        ("module_text.pg_test", TEXT, TEXT + 0x2000),
        ("module_jump_table.pg_test", JUMPS, JUMPS + 48),
    ]


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"name": b"other"}, "does not name it"),
        ({"size": 0}, "implausible text"),
        ({"size": 1 << 30}, "implausible text"),
        ({"jumps": 1 << 24}, "implausible jump table"),
    ],
)
def test_a_misread_struct_module_is_refused(
    offsets: Layout, kwargs: dict[str, object], why: str
) -> None:
    with pytest.raises(KernelAccessError, match=why):
        read_module(image(offsets, **kwargs), offsets, "pg_test", MODULE)  # type: ignore[arg-type]


def test_struct_module_address_from_sysfs() -> None:
    assert struct_module_address("0xffffffffc0b00000\n") == 0xFFFFFFFFC0B00000
    assert struct_module_address("0x0000000000000000\n") is None  # kptr_restrict: hidden
    assert struct_module_address("garbage") is None
    assert struct_module_address(None) is None


def entry(name: str, start: int, size: int) -> RegionEntry:
    return RegionEntry(name, start, size, "0" * 64, ("0" * 64,), 0, "0" * 64)


def module(name: str, text: int, size: int) -> ModuleText:
    return ModuleText(name, MODULE, text, size, 0, 0, 0, 0)


def test_modules_gone_moved_or_new_are_said_not_compared() -> None:
    regions = {
        e.name: e
        for e in (
            entry("core_text", 0xFFFFFFFF81000000, 0x1000),
            entry("module_text.kept", TEXT, 0x2000),
            entry("module_jump_table.kept", JUMPS, 48),
            entry("module_text.gone", 0xFFFFFFFFC0C00000, 0x1000),
            entry("module_text.moved", 0xFFFFFFFFC0D00000, 0x1000),
        )
    }
    live = {
        "kept": module("kept", TEXT, 0x2000),
        "moved": module("moved", 0xFFFFFFFFC0E00000, 0x1000),
        "new": module("new", 0xFFFFFFFFC0F00000, 0x3000),
    }
    stale, findings = stale_modules(regions, live)
    assert stale == {"gone", "moved"}
    said = {f.evidence["module"]: f for f in findings}
    assert said["gone"].technique == "module-text-not-compared"
    assert "no longer loaded" in said["gone"].summary
    assert "now 4096 bytes at 0xffffffffc0e00000" in said["moved"].summary
    assert said["new"].technique == "module-not-in-baseline"
    assert all(f.severity.label == "info" for f in findings)


def test_region_names() -> None:
    assert is_text("core_text") and is_text("module_text.ext4")
    assert not is_text("module_jump_table.ext4") and not is_text("rodata")
    assert module_of("module_static_call_sites.ext4") == "ext4"
    assert module_of("jump_table") is None
