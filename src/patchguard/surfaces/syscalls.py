"""System call dispatch, PatchGuard's SSDT: every way the kernel turns a syscall number into a
function must lead to that syscall's own function in core kernel text.

- Dispatch through code (x86-64 since 6.9, and backports such as Debian's 6.1.85+): each
  direct jump of `x64_sys_call`/`ia32_sys_call`, resolved to the syscall numbers it serves
  (engine/syscalls.py), must land on the start of a syscall function in core text.
- `sys_call_table`/`ia32_sys_call_table`, where kallsyms shows them (CONFIG_KALLSYMS_ALL):
  each entry must point at the start of a syscall function (or sys_ni_syscall) in core text.
  On kernels that dispatch through code the table is no longer used, but a changed entry is
  still tampering.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from patchguard.findings import Disposition, Finding, Gap
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.bpf.symbolize import KernelName
from patchguard.kernel.kallsyms import Location
from patchguard.surfaces.base import SurfaceState, finding
from patchguard.x86.dispatch import (
    DISPATCH_FUNCTIONS,
    TABLE_DISPATCH,
    dispatch_entries,
    is_syscall_function,
    preferred,
)

NAME = "syscalls"
TABLES = tuple(TABLE_DISPATCH)  # sys_call_table, ia32_sys_call_table, x32_sys_call_table
MAX_TABLE_ENTRIES = 1024


@dataclass(frozen=True)
class SyscallTarget:
    """Where one syscall number (or range: the default case) goes, and whether that is right."""

    via: str  # "x64_sys_call" or "sys_call_table"
    lo: int
    hi: int
    address: int  # the jump instruction, or the table slot
    target: int
    target_name: str  # symbol+offset when not at a symbol start
    ok: bool

    @property
    def numbers(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}..{self.hi}"


class SyscallNames:
    """What the dispatch jumps to and the table slots point at, named all at once: by the kernel
    itself where it names addresses (kernel/symbolize.py: nothing waits for /proc/kallsyms),
    else from kallsyms in one forward pass, falling back to its full table for an address no
    symbol starts at (a hooked target: rare, and then worth it)."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._symbolizer = kernel.symbolizer()
        self._where: dict[int, KernelName | None] = {}

    def names_at(self, addresses: Iterable[int]) -> dict[int, str]:
        wanted = set(addresses)
        self._fill(wanted)
        return {a: w.name for a in wanted if (w := self._where[a]) is not None and not w.offset}

    def where(self, address: int) -> KernelName | None:
        if address not in self._where:
            self._fill({address})
        return self._where[address]

    def _fill(self, addresses: set[int]) -> None:
        missing = {a for a in addresses if a not in self._where}
        if not missing:
            return
        if self._symbolizer is not None:
            found = self._symbolizer.names(missing)
        else:
            found = self._from_kallsyms(missing)
        self._where.update({a: found.get(a) for a in missing})

    def _from_kallsyms(self, addresses: set[int]) -> dict[int, KernelName]:
        syms = self._kernel.kallsyms
        starting = syms.starting_at(addresses)
        found: dict[int, KernelName] = {}
        for address in addresses:
            # W: cond_syscall() stubs of syscalls not built in are weak aliases
            named = [s for s in starting.get(address, []) if s.type in "TtWw"]
            if named:
                found[address] = KernelName.of(Location(preferred(named), 0))
            elif (loc := syms.lookup(address)) is not None:
                found[address] = KernelName.of(loc)
        return found

    def bounds(self, name: str) -> tuple[int, int] | None:
        """[start, end) of a function or table: up to the next symbol, as the kernel sizes it
        (or kallsyms, which is sorted within core kernel symbols)."""
        start = self._kernel.symbol_address(name)
        if start is None:
            return None
        if self._symbolizer is not None:
            where = self.where(start)
            if where is None or where.offset or not where.size:
                return None
            return start, start + where.size
        end = self._kernel.kallsyms.address_after(start)
        return (start, end) if end is not None else None

    def is_syscall_start(self, address: int, name: str) -> bool:
        """Whether a syscall function starts at `address`, whose name is `name`: the kernel
        names one alias of several, so another is looked for in kallsyms before saying no."""
        if is_syscall_function(name):
            return True
        return any(is_syscall_function(s.name) for s in self._kernel.kallsyms.at(address))


def _target(kernel: Kernel, names: SyscallNames, address: int) -> tuple[str, bool]:
    where = names.where(address)
    if where is None:  # named as check names it: memory of no listed module, and whose
        try:
            return kernel.attributor().name(address), False
        except KernelAccessError:
            return f"{address:#x}", False
    text = kernel.range("text")
    ok = (
        where.offset == 0
        and where.module is None
        and text is not None
        and address in text
        and names.is_syscall_start(address, where.name)
    )
    module = f" [{where.module}]" if where.module else ""
    return (where.name + module if where.offset == 0 else str(where)), ok


def read_dispatch(kernel: Kernel, names: SyscallNames) -> list[SyscallTarget]:
    found: list[SyscallTarget] = []
    for function in DISPATCH_FUNCTIONS:
        bounds = names.bounds(function)
        if bounds is None:
            continue
        code = kernel.memory().read(bounds[0], bounds[1] - bounds[0])
        for e in dispatch_entries(function, code, bounds[0], names):
            name, ok = _target(kernel, names, e.target)
            found.append(SyscallTarget(function, e.lo, e.hi, e.insn, e.target, name, ok))
    return found


def read_tables(kernel: Kernel, names: SyscallNames) -> list[SyscallTarget]:
    found: list[SyscallTarget] = []
    for table in TABLES:
        bounds = names.bounds(table)
        if bounds is None:
            continue
        entries = min((bounds[1] - bounds[0]) // 8, MAX_TABLE_ENTRIES)
        pointers = [
            p for (p,) in struct.iter_unpack("<Q", kernel.memory().read(bounds[0], entries * 8))
        ]
        while pointers and pointers[-1] == 0:
            pointers.pop()  # alignment padding up to the next symbol, not syscalls
        names.names_at(pointers)  # all at once; _target asks one at a time
        for nr, pointer in enumerate(pointers):
            name, ok = _target(kernel, names, pointer)
            found.append(SyscallTarget(table, nr, nr, bounds[0] + 8 * nr, pointer, name, ok))
    return found


class SyscallsSurface:
    name = NAME
    title = "System call dispatch"

    def collect(self, kernel: Kernel) -> SurfaceState[tuple[SyscallTarget, ...]]:
        gaps: list[Gap] = []
        try:
            names = SyscallNames(kernel)
            records = (*read_dispatch(kernel, names), *read_tables(kernel, names))
        except KernelAccessError as exc:
            return SurfaceState(NAME, (), gaps=[Gap(NAME, "syscall dispatch", str(exc))])
        vias = sorted({r.via for r in records})
        if not any(v in DISPATCH_FUNCTIONS for v in vias):
            gaps.append(
                Gap(
                    NAME,
                    "dispatch through code",
                    "no x64_sys_call in kallsyms: this kernel dispatches through sys_call_table",
                )
            )
        if not any(v in TABLES for v in vias):
            gaps.append(
                Gap(
                    NAME,
                    "sys_call_table",
                    "not in kallsyms (built without "
                    "CONFIG_KALLSYMS_ALL); dispatch through code is checked instead"
                    if vias
                    else "not in kallsyms, and no dispatch function either",
                )
            )
        counts = {via: sum(r.via == via for r in records) for via in vias}
        return SurfaceState(NAME, records, counts, gaps)

    def assess(self, state: SurfaceState[tuple[SyscallTarget, ...]]) -> list[Finding]:
        coded = {r.via for r in state.records if r.via in DISPATCH_FUNCTIONS}
        return [_hook_finding(r, coded) for r in state.records if not r.ok]


# The code that replaced each table where the kernel dispatches through code (6.9+, and the
# stable backports of "x86/syscall: Don't force use of indirect calls for system calls").


def _hook_finding(r: SyscallTarget, coded: set[str]) -> Finding:
    """A wrong target, said as what it does: a table the kernel still calls through, a table
    the kernel no longer reads (still a rootkit's work), or a dispatch jump."""
    dispatch = TABLE_DISPATCH.get(r.via)
    unused = dispatch in coded
    if unused:
        summary = (
            f"{r.via} entry {r.numbers} points to {r.target_name}, which is not a syscall "
            f"function in core kernel text. This kernel dispatches system calls through code "
            f"({dispatch}), not through {r.via}: the patched entry is never called, but "
            "someone wrote it (a rootkit made for kernels that use the table)"
        )
    else:
        summary = (
            f"syscall {r.numbers} goes through {r.via} to {r.target_name}, which is not "
            "a syscall function in core kernel text"
        )
    return finding(
        NAME,
        "syscall-hook",
        f"{r.via}: syscall {r.numbers}",
        summary,
        {
            "via": r.via,
            "slot": f"{r.address:#x}",
            "target": f"{r.target:#x}",
            "target_name": r.target_name,
            "dispatch": dispatch if unused else r.via,
            "live": not unused,
        },
        disposition=Disposition.TAMPERING,
    )
