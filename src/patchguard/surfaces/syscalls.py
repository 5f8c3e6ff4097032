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

from patchguard.engine.findings import Disposition, Finding, Gap, Severity
from patchguard.engine.syscalls import (
    DISPATCH_FUNCTIONS,
    dispatch_entries,
    is_syscall_function,
    preferred,
)
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.kallsyms import Location, Symbol
from patchguard.surfaces.base import SurfaceState

NAME = "syscalls"
TABLES = ("sys_call_table", "ia32_sys_call_table", "x32_sys_call_table")
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
    """Names at exact addresses: the dispatch targets and table slots, asked for all at once
    (one forward pass over kallsyms), then one at a time from what that found; anything
    else falls back to the full table (a hooked target: rare, and then worth it). One
    search for "sys_call" finds the dispatch functions and tables."""

    def __init__(self, kernel: Kernel) -> None:
        self._syms = kernel.kallsyms
        self._at: dict[int, list[Symbol]] = {}
        self._core: dict[str, Symbol] = {}
        for s in self._syms.containing("sys_call"):
            if s.module is None:
                self._core.setdefault(s.name, s)

    def core(self, name: str) -> Symbol | None:
        """A dispatch function or table (a core symbol whose name contains "sys_call")."""
        return self._core.get(name)

    def starting_at(self, addresses: Iterable[int]) -> dict[int, list[Symbol]]:
        wanted = set(addresses)
        missing = {a for a in wanted if a not in self._at}
        if missing:
            found = self._syms.starting_at(missing)
            self._at.update({a: found.get(a, []) for a in missing})
        return {a: self._at[a] for a in wanted if self._at[a]}

    def lookup(self, address: int) -> Location | None:
        found = self._at.get(address)
        if found is None:
            found = self.starting_at([address]).get(address, [])
        # W: cond_syscall() stubs of syscalls not built in are weak aliases
        named = [s for s in found if s.type in "TtWw" and s.module is None]
        return Location(preferred(named), 0) if named else self._syms.lookup(address)

    def in_core_text(self, address: int) -> bool:
        return self._syms.in_core_text(address)


def _target(kernel: Kernel, names: SyscallNames, address: int) -> tuple[str, bool]:
    loc = names.lookup(address)
    if loc is None:
        return f"{address:#x}", False
    at_start = loc.offset == 0 and loc.symbol.module is None
    ok = at_start and is_syscall_function(loc.symbol.name) and kernel.kallsyms.in_core_text(address)
    module = f" [{loc.symbol.module}]" if loc.symbol.module else ""
    return (loc.symbol.name + module if loc.offset == 0 else str(loc)), ok


def _bounds(kernel: Kernel, names: SyscallNames, name: str) -> tuple[int, int] | None:
    """[start, end) of a function or table: end is the next symbol's address, found in the
    text after it (kallsyms is sorted within core kernel symbols)."""
    found = names.core(name)
    if found is None:
        return None
    end = kernel.kallsyms.address_after(found.address)
    return (found.address, end) if end is not None else None


def read_dispatch(kernel: Kernel, names: SyscallNames) -> list[SyscallTarget]:
    found: list[SyscallTarget] = []
    for function in DISPATCH_FUNCTIONS:
        bounds = _bounds(kernel, names, function)
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
        bounds = _bounds(kernel, names, table)
        if bounds is None:
            continue
        entries = min((bounds[1] - bounds[0]) // 8, MAX_TABLE_ENTRIES)
        pointers = [
            p for (p,) in struct.iter_unpack("<Q", kernel.memory().read(bounds[0], entries * 8))
        ]
        while pointers and pointers[-1] == 0:
            pointers.pop()  # alignment padding up to the next symbol, not syscalls
        names.starting_at(pointers)  # all at once; _target asks one at a time
        for nr, pointer in enumerate(pointers):
            name, ok = _target(kernel, names, pointer)
            found.append(SyscallTarget(table, nr, nr, bounds[0] + 8 * nr, pointer, name, ok))
    return found


class SyscallsSurface:
    name = NAME
    title = "System call dispatch"

    def collect(self, kernel: Kernel) -> SurfaceState:
        gaps: list[Gap] = []
        records: list[object] = []
        try:
            names = SyscallNames(kernel)
            records += read_dispatch(kernel, names)
            records += read_tables(kernel, names)
        except KernelAccessError as exc:
            return SurfaceState(NAME, [], gaps=[Gap(NAME, "syscall dispatch", str(exc))])
        vias = sorted({r.via for r in records if isinstance(r, SyscallTarget)})
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
        counts = {
            via: sum(isinstance(r, SyscallTarget) and r.via == via for r in records) for via in vias
        }
        return SurfaceState(NAME, records, counts, gaps)

    def assess(self, state: SurfaceState) -> list[Finding]:
        return [
            Finding(
                NAME,
                "syscall-hook",
                Severity.CRITICAL,
                f"{r.via}: syscall {r.numbers}",
                f"syscall {r.numbers} goes through {r.via} to {r.target_name}, which is not "
                "a syscall function in core kernel text",
                Disposition.TAMPERING,
                "T1014",
                {
                    "via": r.via,
                    "slot": f"{r.address:#x}",
                    "target": f"{r.target:#x}",
                    "target_name": r.target_name,
                },
            )
            for r in state.records
            if isinstance(r, SyscallTarget) and not r.ok
        ]
