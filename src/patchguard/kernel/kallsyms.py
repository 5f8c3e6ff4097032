"""/proc/kallsyms as a symbol table: address -> symbol+offset [module], name -> address, and the
ranges of core text and of the tables the kernel patches itself through."""

from __future__ import annotations

import bisect
import contextlib
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import compress, count, islice, pairwise
from operator import gt, itemgetter
from typing import TypeVar, Union

from patchguard.kernel.errors import KernelAccessError

# "ffffffff81000000 T _stext" or "ffffffffc0a01000 t foo\t[mod]"; one pass of one regex over the
# whole text is several times faster than splitting 122k lines one by one.
_LINE = re.compile(r"^([0-9a-fA-F]+) (\S) (\S+)(?:\t\[([^\]\s]+)\])?[ \t]*$", re.M)

# The bounds of what patchguard protects, by their linker symbol names (start, end).
# Without CONFIG_KALLSYMS_ALL some end markers are missing; the later candidates are the next
# boundaries the linker script puts after them.
RANGE_SYMBOLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "text": ("_stext", ("_etext",)),
    "entry_text": ("__entry_text_start", ("__entry_text_end",)),
    "rodata": ("__start_rodata", ("__end_rodata", "__end_rodata_aligned")),
    "ro_after_init": ("__start_ro_after_init", ("__end_ro_after_init",)),
    "jump_table": ("__start___jump_table", ("__stop___jump_table",)),
    "static_call_sites": ("__start_static_call_sites", ("__stop_static_call_sites",)),
    "static_call_tramp_key": ("__start_static_call_tramp_key", ("__stop_static_call_tramp_key",)),
}


# x86-64: __START_KERNEL_map + LOAD_PHYSICAL_ADDR (16 MiB), where _stext sits without KASLR.
X86_64_DEFAULT_STEXT = 0xFFFFFFFF81000000

# Not modules: the kernel files its trampolines and JITed BPF programs under these names.
PSEUDO_MODULES = frozenset({"__builtin__ftrace", "__builtin__kprobes", "bpf"})


@dataclass(frozen=True)
class Symbol:
    address: int
    type: str  # nm(1) letter: T/t text, D/d data, R/r read-only, B/b bss, ...
    name: str
    module: str | None = None  # None for core kernel symbols

    @property
    def is_text(self) -> bool:
        # W/w: a weak function (__weak calibration_delay_done, the cond_syscall stubs): code
        # like T/t, with its ftrace site and all; weak data objects are V/v.
        return self.type in "TtWw"


@dataclass(frozen=True)
class Location:
    """An address named as symbol+offset [module], the way the kernel prints %pS."""

    symbol: Symbol
    offset: int

    def __str__(self) -> str:
        mod = f" [{self.symbol.module}]" if self.symbol.module else ""
        return f"{self.symbol.name}+{self.offset:#x}{mod}"


@dataclass(frozen=True)
class AddressRange:
    name: str
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.start <= address < self.end


T = TypeVar("T")
Range = tuple[int, int]
MAX_RUNS = 64  # more ascending runs (modules list symbols unsorted): one argsort instead
_ADDRESS = itemgetter(slice(0, 16))  # a line's address: 16 hex digits on 64-bit kernels
_AFTER_ADDRESS = itemgetter(16)  # the space after it


class _Rows:
    """The parsed fields of the table's rows, by sorted position: parsed on first use from
    the line (or given parsed)."""

    def __init__(self, lines: Sequence[str] | Sequence[Row], order: list[int]) -> None:
        self._lines = lines
        self._order = order

    def __getitem__(self, i: int) -> Row:
        line = self._lines[self._order[i]]
        return line if isinstance(line, tuple) else _row(line)


class _RunRows:
    """The parsed fields of the table's rows, by sorted position, for a file made of a few
    ascending runs of addresses: a row's line is found by bisecting each run (no permutation
    of 122k lines is built). The k-th of several lines at one address is the k-th in file
    order, as a stable sort would place it."""

    def __init__(
        self, lines: list[str], words: array[int], runs: list[Range], addresses: list[int]
    ) -> None:
        self._lines, self._words, self._runs, self._addresses = lines, words, runs, addresses

    def __getitem__(self, i: int) -> Row:
        address = self._addresses[i]
        skip = i - bisect.bisect_left(self._addresses, address)
        for lo, hi in self._runs:
            at = bisect.bisect_left(self._words, address, lo, hi)
            while at < hi and self._words[at] == address:
                if not skip:
                    return _row(self._lines[at])
                skip, at = skip - 1, at + 1
        raise IndexError(i)


def _row(line: str) -> Row:
    match = _LINE.match(line)
    if match is None:
        raise _Unparsed(line)
    return match.groups("")  # type: ignore[return-value]  # four str groups


def _ascending_runs(words: array[int]) -> list[Range]:
    """[start, end) of each ascending run of `words`, found at C speed."""
    descents = list(compress(count(1), map(gt, words, islice(words, 1, None))))
    bounds = [0, *descents, len(words)]
    return list(pairwise(bounds))


Rows = Union["_Rows", _RunRows]


class _Unparsed(Exception):
    """A line the fast table read that the regex does not parse."""


_MODULE = re.compile(r"\t\[([^\]\s]+)\]")
_NONZERO = re.compile(r"^(?!0+ )[0-9a-fA-F]+ \S \S", re.M)
Row = tuple[str, str, str, str]  # address (hex), type, name, module ("" for core)


class SymbolTable:
    """kallsyms text with lookups by name (direct search) and by address (bisect).

    A scan asks for a handful of names; parsing 122k lines for that would cost more than
    reading the file. So names are found by searching the text, and the sorted address table
    is built the first time an address is looked up.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._ranges: dict[str, AddressRange | None] = {}  # asked for on every classified run
        self._slow = False  # a line the fast table read does not parse: the regex table then

    @classmethod
    def parse(cls, text: str, source: str = "/proc/kallsyms") -> SymbolTable:
        """Check kallsyms text; raise KernelAccessError if addresses are hidden or none parse."""
        if not _LINE.search(text):
            raise KernelAccessError(source, "no symbol lines found (empty or not kallsyms text)")
        if not _NONZERO.search(text):
            raise KernelAccessError(
                source,
                "every address reads as zero: kernel.kptr_restrict hides them from this user "
                "(run as root with kptr_restrict <= 1)",
            )
        return cls(text)

    @cached_property
    def _lines(self) -> list[str]:
        """The table's lines, split once: the address parse and the rows share them."""
        body = self._text[:-1] if self._text.endswith("\n") else self._text
        return body.split("\n")

    @cached_property
    def _in_file_order(self) -> array[int] | None:
        """Every line's address, in file order, converted at C speed: each line's first 16
        characters joined and read by bytes.fromhex (a tenth of the regex parse of 122k
        lines). None where a line's address is not 16 hex digits followed by a space (a
        32-bit kernel's table, a damaged capture): the regex parse then. A line with such an
        address whose rest the regex refuses (never in the kernel's own file) still counts as
        a start here; naming through it falls back to the regex parse."""
        lines = self._lines
        try:
            digits = "".join(map(_ADDRESS, lines))
            spaces = "".join(map(_AFTER_ADDRESS, lines))
        except IndexError:  # a line shorter than an address and its space
            return None
        if not self._text or spaces != " " * len(lines) or len(digits) != 16 * len(lines):
            return None
        try:
            words = array("Q", bytes.fromhex(digits))
        except ValueError:
            return None
        if sys.byteorder == "little":
            words.byteswap()  # the digits are big-endian
        return words if len(words) == len(lines) else None

    @cached_property
    def _table(self) -> tuple[list[int], Rows]:
        """(addresses sorted, the row of each): lines are parsed only when a row is asked for
        (naming a hook needs a few of 122k)."""
        words = self._in_file_order
        if words is None or self._slow:
            return self._parsed()
        lines = self._lines
        runs = _ascending_runs(words)
        if len(runs) <= MAX_RUNS:  # the core kernel's lines, then bpf's: sorted at C speed
            addresses = sorted(words)
            return addresses, _RunRows(lines, words, runs, addresses)
        order = sorted(range(len(words)), key=words.__getitem__)
        return [words[i] for i in order], _Rows(lines, order)

    def _parsed(self) -> tuple[list[int], Rows]:
        """The table by one regex pass over every line (lines that do not parse are left out)."""
        rows: list[Row] = _LINE.findall(self._text)
        addresses = [int(row[0], 16) for row in rows]
        order = sorted(range(len(rows)), key=addresses.__getitem__)
        return [addresses[i] for i in order], _Rows(rows, order)

    def not_starting(self, addresses: Iterable[int]) -> set[int]:
        """Those of `addresses` at which no symbol starts (every line's address iterated at C
        speed, no set of 122k built)."""
        words = self._in_file_order
        return set(addresses).difference(words if words is not None else self._addresses)

    @cached_property
    def starts(self) -> frozenset[int]:
        """Every address a symbol starts at (membership in O(1): ftrace's 48k sites)."""
        words = self._in_file_order
        return frozenset(words if words is not None else self._addresses)

    def build(self) -> SymbolTable:
        """Parse every line now (address lookups do it on first use)."""
        _ = self._table
        return self

    @property
    def _addresses(self) -> list[int]:
        return self._table[0]

    def _symbol(self, i: int) -> Symbol:
        _, typ, name, mod = self._table[1][i]
        return Symbol(self._addresses[i], typ, name, mod or None)

    def _exactly(self, ask: Callable[[], T]) -> T:
        """`ask()` of the table; if it met a line the fast read took but the regex does not
        parse (never in the kernel's own file), again of the regex-parsed table."""
        try:
            return ask()
        except _Unparsed:
            self._slow = True
            del self._table
            return ask()

    @property
    def symbols(self) -> list[Symbol]:
        return self._exactly(lambda: [self._symbol(i) for i in range(len(self))])

    def __len__(self) -> int:
        return len(self._addresses)

    def _rows_named(self, name: str, first: bool = False) -> list[Row]:
        """Every line whose name field is exactly `name`, in file order (core kernel first);
        with `first`, only the first one."""
        text, needle = self._text, f" {name}"
        found: list[Row] = []
        pos = text.find(needle)
        while pos >= 0 and not (first and found):
            end = pos + len(needle)
            if end == len(text) or text[end] in "\n\t":  # the whole name, not a prefix
                line_end = text.find("\n", end)
                line = text[text.rfind("\n", 0, pos) + 1 : line_end if line_end >= 0 else None]
                match = _LINE.match(line)
                if match and match.group(3) == name:
                    address, typ, _, module = match.groups("")
                    found.append((address, typ, name, module))
            pos = text.find(needle, end)
        return found

    def find(self, name: str, module: str | None = None) -> list[Symbol]:
        """Every symbol of that name (static functions repeat), in `module` if one is named."""
        found = [Symbol(int(a, 16), t, n, m or None) for a, t, n, m in self._rows_named(name)]
        return [s for s in found if module is None or s.module == module]

    def address_of(self, name: str, module: str | None = None) -> int | None:
        """The address of `name`, preferring the core kernel's symbol over a module's.
        /proc/kallsyms lists core symbols before any module's, so the first line found is
        the one: the search stops there (the range markers near the start of the text cost
        next to nothing)."""
        if module is not None:
            found = self.find(name, module)
            return found[0].address if found else None
        rows = self._rows_named(name, first=True)
        return int(rows[0][0], 16) if rows else None

    def at(self, address: int) -> list[Symbol]:
        """The symbols that start exactly at `address`, found in the text without building the
        address table (naming a BPF helper needs only this), or from the table where a scan
        has built it already: one search of the text costs ~2.5 ms, a bisection microseconds."""
        if "_table" in self.__dict__:
            return self._exactly(lambda: self._at_in_table(address))
        text, needle = self._text, f"{address:016x} "
        found: list[Symbol] = []
        pos = text.find(needle)
        while pos >= 0:
            if pos == 0 or text[pos - 1] == "\n":
                line_end = text.find("\n", pos)
                match = _LINE.match(text[pos : line_end if line_end >= 0 else None])
                if match:
                    a, t, n, m = match.groups("")
                    found.append(Symbol(int(a, 16), t, n, m or None))
            pos = text.find(needle, pos + len(needle))
        return found

    def _at_in_table(self, address: int) -> list[Symbol]:
        """The symbols at `address` in file order: a stable sort keeps it among equals."""
        addresses = self._addresses
        first = bisect.bisect_left(addresses, address)
        last = bisect.bisect_right(addresses, address, first)
        return [self._symbol(i) for i in range(first, last)]

    def starting_at(self, addresses: Iterable[int]) -> dict[int, list[Symbol]]:
        """The symbols that start exactly at each of `addresses` (those where some do), for
        many addresses in one forward pass: core kernel lines are printed in address order,
        so each search starts where the last one ended (830 dispatch targets: ~2 ms, where
        one search each would take a second). An address where no symbol starts costs one
        search to the end of the text."""
        text = self._text
        found: dict[int, list[Symbol]] = {}
        pos = 0
        for address in sorted(set(addresses)):
            needle = f"{address:016x} "
            if text.startswith(needle):
                hit = 0  # the first line, which no newline precedes
            elif (hit := text.find("\n" + needle, pos) + 1) == 0:
                continue  # not at a symbol start: the next search starts where this one did
            symbols: list[Symbol] = []
            while text.startswith(needle, hit):
                end = text.find("\n", hit)
                end = end if end >= 0 else len(text)
                match = _LINE.match(text, hit, end)
                if match:
                    a, t, n, m = match.groups("")
                    symbols.append(Symbol(int(a, 16), t, n, m or None))
                hit = end + 1
            found[address] = symbols
            pos = hit - 1
        return found

    def lookup(self, address: int) -> Location | None:
        """The symbol at or below `address` (kallsyms carries no sizes: the nearest one below)."""
        return self._exactly(lambda: self._lookup(address))

    def _lookup(self, address: int) -> Location | None:
        i = bisect.bisect_right(self._addresses, address) - 1
        if i < 0:
            return None
        # Several names can share an address (aliases): name it by the first one listed.
        sym = self._symbol(bisect.bisect_left(self._addresses, self._addresses[i]))
        return Location(sym, address - sym.address)

    def name(self, address: int) -> str:
        """symbol+offset [module] of the nearest symbol below, else the bare address (no
        bounds: attribution.Attributor names by extent)."""
        loc = self.lookup(address)
        return str(loc) if loc else f"{address:#x}"

    def address_after(self, address: int) -> int | None:
        """The next higher address kallsyms lists after the line of `address`, read from the
        text without building the table: core kernel symbols are printed in address order."""
        text, needle = self._text, f"{address:016x} "
        pos = text.find(needle)
        line = text.find("\n", pos) if pos >= 0 else -1
        while line >= 0:
            nxt = text[line + 1 : line + 17]
            if len(nxt) == 16 and int(nxt, 16) > address:
                return int(nxt, 16)
            if not text.startswith(needle, line + 1):
                return None
            line = text.find("\n", line + 1)
        return None

    def next_address(self, address: int) -> int | None:
        """The first symbol address strictly above `address`: an upper bound of its symbol."""
        i = bisect.bisect_right(self._addresses, address)
        return self._addresses[i] if i < len(self._addresses) else None

    def range(self, name: str) -> AddressRange | None:
        """A protected range by its short name (see RANGE_SYMBOLS), None if not visible."""
        if name not in self._ranges:
            self._ranges[name] = self._find_range(name)
        return self._ranges[name]

    def _find_range(self, name: str) -> AddressRange | None:
        start_sym, end_syms = RANGE_SYMBOLS[name]
        start = self.address_of(start_sym)
        ends = (self.address_of(sym) for sym in end_syms)
        end = next((e for e in ends if e is not None), None)
        if start is None or end is None or end <= start:
            return None
        return AddressRange(name, start, end)

    def ranges(self) -> dict[str, AddressRange]:
        found = {name: self.range(name) for name in RANGE_SYMBOLS}
        return {name: r for name, r in found.items() if r is not None}

    def _lines_with(self, needle: str) -> Iterator[Symbol]:
        """Symbols of every line containing `needle`, found by str.find (no full parse)."""
        text = self._text
        pos = text.find(needle)
        while pos >= 0:
            start = text.rfind("\n", 0, pos) + 1
            end = text.find("\n", pos)
            end = end if end >= 0 else len(text)
            match = _LINE.match(text, start, end)
            if match:
                a, t, n, m = match.groups("")
                yield Symbol(int(a, 16), t, n, m or None)
            pos = text.find(needle, end)

    def containing(self, part: str) -> list[Symbol]:
        """Every symbol whose line contains `part` (filter the names further yourself)."""
        return list(self._lines_with(part))

    def with_prefix(self, prefix: str) -> list[Symbol]:
        """Every symbol whose name starts with `prefix` (e.g. the __SCT__ trampolines)."""
        return [s for s in self._lines_with(f" {prefix}") if s.name.startswith(prefix)]

    def core_text_with_prefix(self, prefix: str) -> dict[str, int]:
        """name -> address of every core kernel text symbol (T or t) whose name starts with
        `prefix`: one pass of str.find and slicing, no regex or Symbol per line (the scan
        asks this for the 1,600 tracepoint iterators)."""
        text, needle = self._text, f" {prefix}"
        found: dict[str, int] = {}
        pos = text.find(needle)
        while pos >= 0:
            end = text.find("\n", pos)
            end = end if end >= 0 else len(text)
            start = text.rfind("\n", 0, pos) + 1
            name = text[pos + 1 : end].rstrip()
            if text[pos - 1] in "Tt" and pos - start >= 3 and "\t" not in name:
                with contextlib.suppress(ValueError):
                    found.setdefault(name, int(text[start : pos - 2], 16))
            pos = text.find(needle, end)
        return found

    def in_modules(self, modules: set[str]) -> list[Symbol]:
        """Every symbol of the named modules or pseudo modules ([bpf], [__builtin__ftrace])."""
        return [s for s in self._module_symbols if s.module in modules]

    @cached_property
    def _module_symbols(self) -> tuple[Symbol, ...]:
        """Every module and pseudo-module symbol, in file order: found once, several
        surfaces ask for some modules' (a scan asked for [bpf]'s three times)."""
        return tuple(self._lines_with("\t["))

    def modules(self) -> set[str]:
        """Names of the modules that have symbols here (one of the module cross-views)."""
        return {m for m in _MODULE.findall(self._text) if m not in PSEUDO_MODULES}

    def in_core_text(self, address: int) -> bool:
        text = self.range("text")
        return text is not None and address in text
