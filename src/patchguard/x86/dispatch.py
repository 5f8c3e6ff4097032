"""Syscall dispatch through code (x86-64 since 6.9, and stable backports such as Debian's
6.1.85+): `x64_sys_call(regs, nr)` is a `switch (nr)` that the compiler turns into a tree of
`cmp esi, K` / `je` / `ja` ending in direct jumps to `__x64_sys_*`. Following the tree with the
range of `nr` each branch leaves gives, for every jump, the syscall number it serves, so a
retargeted jump is reported as "syscall 62 (kill) redirected to ...", not only as changed code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from patchguard.kernel.kallsyms import Symbol, SymbolTable
from patchguard.x86.inputs import KernelRead, Symbols

DISPATCH_FUNCTIONS = ("x64_sys_call", "x32_sys_call", "ia32_sys_call")
# The syscall tables and the switch each one's syscalls are dispatched through since 6.9
TABLE_DISPATCH = {
    "sys_call_table": "x64_sys_call",
    "ia32_sys_call_table": "ia32_sys_call",
    "x32_sys_call_table": "x32_sys_call",
}
U32 = 0xFFFFFFFF
# What the dispatch jumps to: the pt_regs wrappers, or the inner function where the compiler
# inlined the wrapper (argument-less syscalls such as getpid).
SYSCALL_PREFIXES = (
    "__x64_sys_",
    "__ia32_sys_",
    "__x64_compat_sys_",
    "__x32_compat_sys_",
    "__ia32_compat_sys_",
    "__do_sys_",
    "__do_compat_sys_",
    "__se_sys_",
)
NI_SYSCALL = ("sys_ni_syscall", "__x64_sys_ni_syscall", "__ia32_sys_ni_syscall")


def is_syscall_function(name: str) -> bool:
    return name.startswith(SYSCALL_PREFIXES) or name in NI_SYSCALL


# What nr can be on a path: inclusive bounds (unsigned 32-bit) and values ruled out between
# them by an earlier `je` (a compare tree tests equality before it splits the range).
Range = tuple[int, int, frozenset[int]]


@dataclass(frozen=True)
class DispatchEntry:
    """One direct jump or call of a dispatch function and the syscall numbers that reach it."""

    function: str
    insn: int  # address of the jmp/call
    size: int
    lo: int  # nr range that reaches this instruction (less `excluded`)
    hi: int
    target: int
    target_name: str  # "__x64_sys_kill"

    @property
    def nr(self) -> int | None:
        return self.lo if self.lo == self.hi else None

    @property
    def syscall(self) -> str:
        name = self.target_name
        for prefix in SYSCALL_PREFIXES:
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name

    def describe(self) -> str:
        which = (
            f"syscall {self.nr} ({self.syscall})"
            if self.nr is not None
            else (f"syscalls {self.lo}..{self.hi} ({self.syscall})")
        )
        return f"{self.function}: {which}"


def _trim(lo: int, hi: int, out: frozenset[int]) -> Range | None:
    """Normalise: move the ends past excluded values; None when nothing is left."""
    while lo <= hi and lo in out:
        lo += 1
    while hi >= lo and hi in out:
        hi -= 1
    return (lo, hi, frozenset(v for v in out if lo < v < hi)) if lo <= hi else None


def _branch(mnemonic: str, k: int, r: Range) -> tuple[Range | None, Range | None]:
    """(range if taken, range if not) for a conditional jump after `cmp nr, k` (unsigned).
    Only the two ranges this jump splits into are computed: the walk does this ~4,000 times."""
    lo, hi, out = r
    if mnemonic in ("je", "jne"):
        equal, other = _trim(max(lo, k), min(hi, k), out), _trim(lo, hi, out | {k})
        return (equal, other) if mnemonic == "je" else (other, equal)
    if mnemonic in ("ja", "jbe"):
        above, at_most = _trim(max(lo, k + 1), hi, out), _trim(lo, min(hi, k), out)
        return (above, at_most) if mnemonic == "ja" else (at_most, above)
    below = _trim(lo, min(hi, k - 1), out) if k > 0 else None
    at_least = _trim(max(lo, k), hi, out)
    if mnemonic == "jae":
        return at_least, below
    if mnemonic == "jb":
        return below, at_least
    raise KeyError(mnemonic)


def _target(op_str: str) -> int | None:
    try:
        return int(op_str, 16) if op_str.startswith("0x") else None
    except ValueError:
        return None


class _Walker:
    def __init__(self, code: bytes, start: int) -> None:
        import capstone  # imported when something is disassembled, not with the surface

        self.code, self.start = code, start
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        # One linear pass: a dispatch function is straight code, no data between cases, so
        # every branch target is an instruction start of this listing.
        self.listing = {i[0]: i for i in md.disasm_lite(code, start)}
        self.order = sorted(self.listing)
        self.index = {address: n for n, address in enumerate(self.order)}
        self.seen: set[tuple[int, Range]] = set()
        self.jumps: list[tuple[int, int, int, int, int]] = []  # insn, size, lo, hi, target

    def inside(self, address: int) -> bool:
        return self.start <= address < self.start + len(self.code)

    def insns(self, address: int) -> Iterator[tuple[int, int, str, str]]:
        n = self.index.get(address)
        if n is None:  # a branch into the middle of an instruction: not a compiler's tree
            return
        for a in self.order[n:]:
            yield self.listing[a]

    def walk(self, address: int, r: Range) -> None:
        work = [(address, r)]
        while work:
            at, nr = work.pop()
            if (at, nr) in self.seen or not self.inside(at):
                continue
            self.seen.add((at, nr))
            self._block(at, nr, work)

    def _block(self, at: int, r: Range, work: list[tuple[int, Range]]) -> None:
        """Follow straight-line code from `at` with nr in `r`; branches go onto `work`."""
        k: int | None = None
        for insn in self.insns(at):
            _, _, m, op_str = insn
            target = _target(op_str)
            if m == "cmp" and op_str.startswith("esi, "):
                k = int(op_str.split(", ")[1], 0) & U32
            elif m == "test" and op_str == "esi, esi":
                k = 0
            elif m in ("je", "jne", "ja", "jbe", "jae", "jb") and k is not None and target:
                taken, fall = _branch(m, k, r)
                if taken is not None:
                    if self.inside(target):
                        work.append((target, taken))
                    else:
                        self._record(insn, target, taken)
                if fall is None:
                    return
                r = fall
            elif m in ("jmp", "call") and target is not None:
                if self.inside(target) and m == "jmp":
                    work.append((target, r))
                    return
                # A tail jump ends the path; so does a call, which the compiler emits only for
                # syscalls that do not return (exit, exit_group): what follows is another case.
                self._record(insn, target, r)
                return
            elif m in ("ret", "int3", "ud2") or m.startswith("j"):
                return

    def _record(self, insn: tuple[int, int, str, str], target: int, r: Range) -> None:
        self.jumps.append((insn[0], insn[1], r[0], r[1], target))


class TargetNames(Protocol):
    def names_at(self, addresses: Iterable[int]) -> dict[int, str]:
        """The name of the symbol that starts at each address (those where one does)."""
        ...


def preferred(aliases: list[Symbol]) -> Symbol:
    """The name to show among the symbols at one address: the syscall function kallsyms lists
    last (__x64_sys_kill, listed after __ia32_sys_kill and __do_sys_kill), else the first."""
    syscall = [s for s in aliases if is_syscall_function(s.name)]
    return syscall[-1] if syscall else aliases[0]


class KallsymsNames:
    """TargetNames from kallsyms text: all addresses in one forward pass (starting_at)."""

    def __init__(self, symbols: SymbolTable) -> None:
        self.symbols = symbols

    def names_at(self, addresses: Iterable[int]) -> dict[int, str]:
        found = self.symbols.starting_at(addresses)
        return {address: preferred(aliases).name for address, aliases in found.items()}


def dispatch_entries(
    function: str, code: bytes, start: int, symbols: TargetNames
) -> list[DispatchEntry]:
    """Every direct jump/call of one dispatch function, with the nr range that reaches it."""
    walker = _Walker(code, start)
    walker.walk(start, (0, U32, frozenset()))
    unique = {(insn, lo, hi): (insn, size, lo, hi, t) for insn, size, lo, hi, t in walker.jumps}
    names = symbols.names_at({jump[4] for jump in unique.values()})
    entries = [
        DispatchEntry(function, insn, size, lo, hi, target, names.get(target, f"{target:#x}"))
        for insn, size, lo, hi, target in unique.values()
    ]
    return sorted(entries, key=lambda e: (e.lo, e.insn))


def _decode_branch(code: bytes, address: int) -> int | None:
    """Destination of a jmp/call rel32 (e9/e8) or jmp rel8 (eb) at `address`, else None."""
    if len(code) >= 5 and code[0] in (0xE8, 0xE9):
        return address + 5 + int.from_bytes(code[1:5], "little", signed=True)
    if len(code) >= 2 and code[0] == 0xEB:
        return address + 2 + int.from_bytes(code[1:2], "little", signed=True)
    return None


def redirected(
    entries: list[DispatchEntry], start: int, end: int, read: KernelRead, symbols: Symbols
) -> tuple[DispatchEntry, str] | None:
    """If a changed run [start, end) hits a dispatch jump, that entry and a sentence saying
    where the syscall goes now (read from the live instruction)."""
    for entry in entries:
        if entry.insn < end and start < entry.insn + entry.size:
            live = read(entry.insn, entry.size)
            dest = _decode_branch(live, entry.insn) if live is not None else None
            where = "code that no longer decodes as a jump"
            if dest is not None:
                where = symbols.name(dest)
            return entry, f"{entry.describe()} redirected from {entry.target_name} to {where}"
    return None
