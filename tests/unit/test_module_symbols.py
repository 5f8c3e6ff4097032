"""Modules as kernel memory holds them (kernel/module_symbols.py) and their text views
(surfaces/modules/memory_views.py): the module list, a module's own symbol table and its
kobject's place on module_kset's list, laid out with the 6.18 vmlinux BTF offsets (this
machine has no modules: the lab reads real ones, tests/lab/test_lab_ftrace_ops.py)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.module_symbols import (
    ModuleInMemory,
    ModuleLayout,
    layout,
    read_module,
    walk_modules,
)
from patchguard.surfaces.modules.memory_views import memory_view_findings, settled_sysfs
from patchguard.surfaces.modules.records import (
    BY_NAME_ONLY,
    GONE,
    LISTED,
    ModuleMemoryViews,
    ModulesRecords,
)

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
HEAD = 0xFFFFFFFF83000000  # &modules
MOD = 0xFFFFFFFFC0100000
SYMTAB, STRTAB, TYPETAB = 0xFFFF888100100000, 0xFFFF888100200000, 0xFFFF888100300000
NAMES = ("", "pg_hide_me", "pg_filldir", "__this_module")


@pytest.fixture(scope="module")
def at() -> ModuleLayout:
    return layout(Btf.parse(gzip.decompress(VMLINUX.read_bytes())))


def image(at: ModuleLayout, linked: bool = True, name: bytes = b"pg_mod\0\0") -> Image:
    mem = Image()
    strings = b"\0".join(n.encode() for n in NAMES) + b"\0"
    offsets = [strings.index(n.encode() + b"\0") if n else len(strings) - 1 for n in NAMES]
    symtab = b"".join(struct.pack("<IBBHQQ", o, 0, 0, 1, 0, 0) for o in offsets)
    module = bytearray(4096)
    struct.pack_into("<QQ", module, at.list, HEAD, HEAD)
    module[at.name : at.name + len(name)] = name
    table = at.kallsyms
    struct.pack_into("<Q", module, table + at.symtab, SYMTAB)
    struct.pack_into("<I", module, table + at.num_symtab, len(NAMES))
    struct.pack_into("<Q", module, table + at.strtab, STRTAB)
    struct.pack_into("<Q", module, table + at.typetab, TYPETAB)
    entry, kset = MOD + at.kobj_entry, 0xFFFF888100400000
    struct.pack_into("<QQ", module, at.kobj_entry, *((kset, kset) if linked else (entry, entry)))
    mem.put(MOD, bytes(module))
    mem.put_words(kset, entry, entry)
    mem.put_words(HEAD, MOD + at.list, MOD + at.list)
    mem.put(SYMTAB, symtab)
    mem.put(STRTAB, strings + bytes(1024))
    mem.put(TYPETAB, b"tttD")
    return mem


def test_the_module_list_and_a_modules_own_symbols(at: ModuleLayout) -> None:
    mem = image(at)
    (module,) = walk_modules(mem, HEAD, at)
    found = read_module(mem, module, at)
    assert found.name == "pg_mod" and found.in_kset
    assert found.symbols == (("pg_hide_me", "t"), ("pg_filldir", "t"), ("__this_module", "D"))


def test_a_kobject_taken_out_of_sysfs_is_off_the_kset(at: ModuleLayout) -> None:
    assert not read_module(image(at, linked=False), MOD, at).in_kset


def test_a_list_of_no_modules_is_refused(at: ModuleLayout) -> None:
    mem = image(at, name=b"\x01\x02\0")
    with pytest.raises(KernelAccessError, match="no module"):
        walk_modules(mem, HEAD, at)


def views(sysfs: str, hidden: tuple[str, ...] = (), in_kset: bool = True) -> ModuleMemoryViews:
    return ModuleMemoryViews("pg_mod", 3, 3 - len(hidden), hidden, sysfs, in_kset)


def test_symbols_kallsyms_does_not_print_are_a_filtered_view() -> None:
    (found,) = memory_view_findings(
        ModulesRecords(memory_views=(views(LISTED, ("pg_filldir", "pg_hide_me")),))
    )
    assert found.technique == "filtered-view" and found.subject == "/proc/kallsyms"
    assert found.summary.startswith(
        "/proc/kallsyms, as this process reads it, hides 2 of the 3 symbols module pg_mod's "
        "own symbol table in kernel memory holds (pg_filldir, pg_hide_me)"
    )


def test_a_filtered_listing_and_a_removed_kobject_are_told_apart() -> None:
    (filtered,) = memory_view_findings(ModulesRecords(memory_views=(views(BY_NAME_ONLY),)))
    (removed,) = memory_view_findings(ModulesRecords(memory_views=(views(GONE, in_kset=False),)))
    assert filtered.technique == "filtered-view" and filtered.subject == "/sys/module"
    assert "getdents" in filtered.summary and "opens by name" in filtered.summary
    assert removed.technique == "hidden-module" and removed.subject == "pg_mod"
    assert "kobject_del" in removed.summary and "no longer on" in removed.summary
    assert memory_view_findings(ModulesRecords(memory_views=(views(LISTED),))) == []


def in_memory(in_kset: bool = True) -> ModuleInMemory:
    return ModuleInMemory(MOD, "pg_mod", (), in_kset)


def test_a_module_that_left_the_list_meanwhile_is_no_hidden_module(tmp_path: Path) -> None:
    """Unloading: its kobject went before it left the module list; gone now, nothing to say."""
    assert settled_sysfs([views(GONE, in_kset=False)], [], frozenset(), tmp_path) == []


def test_a_module_listed_on_the_second_look_was_loading(tmp_path: Path) -> None:
    (loading,) = settled_sysfs([views(GONE)], [in_memory()], frozenset({"pg_mod"}), tmp_path)
    assert loading.sysfs == LISTED and not loading.second_look
    assert memory_view_findings(ModulesRecords(memory_views=(loading,))) == []


def test_what_held_on_the_second_look_says_so(tmp_path: Path) -> None:
    (tmp_path / "pg_mod").mkdir()  # opens by name, left out of the listing: filtered
    (held,) = settled_sysfs([views(GONE)], [in_memory()], frozenset({"other"}), tmp_path)
    assert held.sysfs == BY_NAME_ONLY and held.second_look
    (found,) = memory_view_findings(ModulesRecords(memory_views=(held,)))
    assert found.technique == "filtered-view" and found.evidence["second_look"] is True
    assert "module_kset's list in memory, on a second look too:" in found.summary


def test_views_that_agreed_are_not_looked_at_again(tmp_path: Path) -> None:
    listed = views(LISTED)
    assert settled_sysfs([listed], [], None, tmp_path) == [listed]
