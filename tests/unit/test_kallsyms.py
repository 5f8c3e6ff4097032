"""kallsyms parsing on an excerpt of this machine's /proc/kallsyms (6.18-fc) and hand-made
edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.kallsyms import SymbolTable

FIXTURE = Path(__file__).parent.parent / "fixtures" / "6.18-fc"


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    return Kernel(FIXTURE).kallsyms


def test_names_an_address_as_symbol_plus_offset(table: SymbolTable) -> None:
    entry = table.address_of("entry_SYSCALL_64")
    assert entry == 0xFFFFFFFF81000080
    assert str(table.lookup(entry + 0x12)) == "entry_SYSCALL_64+0x12"
    assert str(table.lookup(entry)) == "entry_SYSCALL_64+0x0"


def test_ranges_of_text_and_patch_tables(table: SymbolTable) -> None:
    ranges = table.ranges()
    assert ranges["text"].start == 0xFFFFFFFF81000000
    assert ranges["text"].end == 0xFFFFFFFF8220BB08
    assert ranges["jump_table"].size == 0xFFFFFFFF8289D900 - 0xFFFFFFFF82880B10
    assert ranges["static_call_sites"].start == ranges["jump_table"].end
    # This kernel has no CONFIG_KALLSYMS_ALL: no __end_rodata, so no rodata range is claimed.
    assert "rodata" not in ranges
    assert table.in_core_text(table.address_of("x64_sys_call") or 0)


def test_pseudo_modules_are_not_modules(table: SymbolTable) -> None:
    trampoline = table.find("ftrace_trampoline")
    assert trampoline and trampoline[0].module == "__builtin__ftrace"
    assert table.modules() == set()


def test_module_symbols_and_core_preference() -> None:
    text = (
        "ffffffff81000000 T _stext\n"
        "ffffffff81100000 T shared_name\n"
        "ffffffff82000000 T _etext\n"
        "ffffffffc0a00000 t shared_name\t[evil]\n"
        "ffffffffc0a00100 t hook_kill\t[evil]\n"
    )
    table = SymbolTable.parse(text)
    assert table.modules() == {"evil"}
    assert table.address_of("shared_name") == 0xFFFFFFFF81100000
    assert table.address_of("shared_name", module="evil") == 0xFFFFFFFFC0A00000
    assert table.address_of("hook_kill") == 0xFFFFFFFFC0A00100  # only a module has it
    assert str(table.lookup(0xFFFFFFFFC0A00104)) == "hook_kill+0x4 [evil]"
    assert not table.in_core_text(0xFFFFFFFFC0A00104)


def test_zeroed_addresses_are_a_clear_error() -> None:
    hidden = "0000000000000000 T _stext\n0000000000000000 t foo\t[mod]\n"
    with pytest.raises(KernelAccessError, match="kptr_restrict"):
        SymbolTable.parse(hidden)


def test_odd_and_truncated_lines_are_skipped() -> None:
    text = (
        "ffffffff81000000 T _stext\n"
        "ffffffff81000010 T\n"  # truncated: no name
        "garbage line\n"
        "ffffffff8100002"  # cut mid-address at the end of a read
    )
    table = SymbolTable.parse(text)
    assert len(table) == 1
    assert table.lookup(0x10) is None  # below every symbol


def test_empty_text_is_an_error() -> None:
    with pytest.raises(KernelAccessError, match="no symbol lines"):
        SymbolTable.parse("")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KernelAccessError, match="/proc/kallsyms"):
        _ = Kernel(tmp_path).kallsyms


def test_symbols_exactly_at_an_address(table: SymbolTable) -> None:
    base = table.address_of("__bpf_call_base")
    assert base is not None
    assert [s.name for s in table.at(base)] == ["__bpf_call_base"]
    assert table.at(base + 1) == []
    # _stext shares its address with other names: all of them, in file order
    names = [s.name for s in table.at(0xFFFFFFFF81000000)]
    assert "_stext" in names and len(names) >= 2


def test_refresh_reads_kallsyms_again(tmp_path: Path) -> None:
    """A handle kept across sweeps (the guard) sees symbols that appeared since: a BPF
    trampoline created after the first read names the code an fentry site now calls."""
    kallsyms = tmp_path / "proc" / "kallsyms"
    kallsyms.parent.mkdir()
    kallsyms.write_text("ffffffff81000000 T _stext\n")
    kernel = Kernel(tmp_path)
    assert kernel.kallsyms.address_of("bpf_trampoline_6442") is None
    kallsyms.write_text(
        "ffffffff81000000 T _stext\nffffffffc0200000 t bpf_trampoline_6442\t[bpf]\n"
    )
    assert kernel.kallsyms.address_of("bpf_trampoline_6442") is None  # read once ...
    kernel.refresh()
    assert kernel.kallsyms.address_of("bpf_trampoline_6442") == 0xFFFFFFFFC0200000  # ... again


def test_starting_at_many_addresses_in_one_pass() -> None:
    text = (
        "ffffffff81000000 T _stext\n"
        "ffffffff81000010 T __ia32_sys_kill\n"
        "ffffffff81000010 T __x64_sys_kill\n"
        "ffffffff81000040 t helper\n"
        "ffffffff82000000 T _etext\n"
        "ffffffffc0a00000 t hook_kill\t[evil]\n"
    )
    table = SymbolTable.parse(text)
    asked = [0xFFFFFFFF81000040, 0xFFFFFFFF81000000, 0xFFFFFFFF81000011, 0xFFFFFFFFC0A00000]
    asked += [0xFFFFFFFF81000010, 0xFFFFFFFF81000040]  # repeated, and out of order
    found = table.starting_at(asked)
    assert {a: [s.name for s in syms] for a, syms in found.items()} == {
        0xFFFFFFFF81000000: ["_stext"],  # the first line
        0xFFFFFFFF81000010: ["__ia32_sys_kill", "__x64_sys_kill"],  # aliases, in file order
        0xFFFFFFFF81000040: ["helper"],  # found after a miss (0x...11, inside __x64_sys_kill)
        0xFFFFFFFFC0A00000: ["hook_kill"],
    }
    assert found[0xFFFFFFFFC0A00000][0].module == "evil"
    for address, symbols in found.items():
        assert symbols == table.at(address)


def test_starting_at_agrees_with_at_on_a_captured_kernel(table: SymbolTable) -> None:
    addresses = [s.address for s in table.symbols]
    found = table.starting_at(addresses)
    assert set(found) == set(addresses)
    for address in addresses:
        assert found[address] == table.at(address), hex(address)


def test_at_from_the_table_agrees_with_the_text_search(table: SymbolTable) -> None:
    """Once the address table is built, at() bisects it: the same symbols, in file order,
    as a search of the text finds, on the captured kernel and where aliases lie in runs of
    addresses the file does not print in order (modules, then BPF)."""
    text = (
        "ffffffff81000000 T _stext\n"
        "ffffffff81000000 T startup_64\n"
        "ffffffff82000000 T _etext\n"
        "ffffffffc0a00000 t hook_kill\t[evil]\n"
        "ffffffffc0a00000 t hook_kill_alias\t[evil]\n"
        "ffffffffc0900000 t early\t[other]\n"
        "ffffffffc0a00000 t bpf_prog_1_f\t[bpf]\n"
    )
    for symbols in (SymbolTable.parse(text), Kernel(FIXTURE).kallsyms):
        addresses = sorted({int(line[:16], 16) for line in symbols._lines})
        searched = {a: symbols.at(a) for a in [*addresses, addresses[0] + 1]}
        symbols.build()
        assert {a: symbols.at(a) for a in searched} == searched
    built = SymbolTable.parse(text).build()
    names = ["hook_kill", "hook_kill_alias", "bpf_prog_1_f"]
    assert [s.name for s in built.at(0xFFFFFFFFC0A00000)] == names
