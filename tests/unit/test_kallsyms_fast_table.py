"""The kallsyms table read at C speed (addresses by bytes.fromhex, rows parsed when named, rows
found by bisecting the file's ascending runs) gives what the regex parse of every line gives:
the same sorted addresses, the same symbol for every lookup (aliases: the first listed), the
same symbol list, on this machine's excerpt and on files made to test each path."""

from __future__ import annotations

import random
from pathlib import Path

from patchguard.kernel.kallsyms import MAX_RUNS, SymbolTable

FIXTURE = Path(__file__).parent.parent / "fixtures" / "6.18-fc" / "proc" / "kallsyms"


def regex_parsed(text: str) -> SymbolTable:
    """The same text through the regex parse (the path a non-canonical file takes)."""
    table = SymbolTable(text)
    table._slow = True  # the reference path
    return table


def same(text: str) -> SymbolTable:
    fast, slow = SymbolTable(text), regex_parsed(text)
    assert fast._addresses == slow._addresses
    assert [str(s) for s in fast.symbols] == [str(s) for s in slow.symbols]
    probes = sorted(set(slow._addresses))
    for address in probes + [a + 3 for a in probes] + [probes[0] - 1, probes[-1] + 99]:
        assert fast.lookup(address) == slow.lookup(address), hex(address)
        assert fast.next_address(address) == slow.next_address(address)
    assert fast.starts == slow.starts
    return fast


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_this_machines_kallsyms_reads_the_same_fast() -> None:
    table = same(FIXTURE.read_text())
    assert table._in_file_order is not None  # the fast path was taken


def test_aliases_and_a_few_runs_are_found_by_bisecting_the_runs() -> None:
    core = [f"{0xFFFFFFFF81000000 + 16 * i:016x} T f{i}" for i in range(500)]
    alias = [f"{0xFFFFFFFF81000000 + 16 * 7:016x} t alias_of_f7"]
    bpf = [f"{0xFFFFFFFFC0000000 + 64 * i:016x} t bpf_prog_{i}\t[bpf]" for i in range(20)]
    low = [f"{0xFFFFFFFF80000000 + 8 * i:016x} T early{i}" for i in range(5)]  # a descent
    text = "\n".join(core[:100] + alias + core[100:] + bpf + low) + "\n"
    table = same(text)
    assert str(table.lookup(0xFFFFFFFF81000000 + 16 * 7 + 2)) == "f7+0x2"  # first listed


def test_many_runs_sort_by_permutation() -> None:
    rng = random.Random(7)
    rows = lines_of(FIXTURE) + [
        f"{0xFFFFFFFFC0400000 + rng.randrange(1 << 16) * 16:016x} t m{i}\t[mod]"
        for i in range(40 * MAX_RUNS)  # a module's symbols are listed unsorted
    ]
    table = same("\n".join(rows))
    assert table._in_file_order is not None


def test_a_line_the_regex_does_not_parse_sends_lookups_to_the_regex_table() -> None:
    rows = lines_of(FIXTURE)[:300]
    rows.insert(50, f"{rows[49][:16]} T two words")  # an address the fast read takes
    table = SymbolTable("\n".join(rows))
    reference = regex_parsed("\n".join(rows))
    address = int(rows[49][:16], 16)
    assert table.lookup(address + 1) == reference.lookup(address + 1)
    assert [str(s) for s in table.symbols] == [str(s) for s in reference.symbols]


def test_a_32_bit_style_table_takes_the_regex_parse() -> None:
    text = "c1000000 T _stext\nc1000100 T foo\nc1000200 T _etext\n"
    table = SymbolTable.parse(text)
    assert table._in_file_order is None
    assert str(table.lookup(0xC1000104)) == "foo+0x4"
