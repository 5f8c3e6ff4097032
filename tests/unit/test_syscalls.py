"""Syscall dispatch through code, on the real bytes of x64_sys_call captured from this
machine's kernel (6.18-fc: tests/fixtures/6.18-fc/x64_sys_call.json, with the kallsyms lines of
every function it jumps to)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from patchguard.integrity.check import dispatch_finding
from patchguard.integrity.explain import SiteIndex, diff_runs, explain
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.syscalls import SyscallsSurface, SyscallTarget
from patchguard.x86.dispatch import DispatchEntry, KallsymsNames, dispatch_entries

FIXTURE = Path(__file__).parent.parent / "fixtures" / "6.18-fc" / "x64_sys_call.json"
EVIL = 0xFFFFFFFF81F00000  # a made-up "hook" function in core text, for the redirect


@pytest.fixture(scope="module")
def captured() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def symbols(captured: dict[str, Any]) -> SymbolTable:
    lines = [*captured["kallsyms"], f"{EVIL:016x} t evil_hook"]
    return SymbolTable.parse("\n".join(sorted(lines)) + "\n").build()


@pytest.fixture(scope="module")
def entries(captured: dict[str, Any], symbols: SymbolTable) -> list[DispatchEntry]:
    code = bytes.fromhex(captured["code"])
    return dispatch_entries(
        "x64_sys_call", code, int(captured["start"], 16), KallsymsNames(symbols)
    )


def by_syscall(entries: list[DispatchEntry]) -> dict[str, int | None]:
    return {e.syscall: e.nr for e in entries if e.nr is not None}


def test_each_jump_gets_its_syscall_number(entries: list[DispatchEntry]) -> None:
    numbers = by_syscall(entries)
    # x86-64 numbers from arch/x86/entry/syscalls/syscall_64.tbl
    assert numbers["read"] == 0 and numbers["write"] == 1 and numbers["getpid"] == 39
    assert numbers["kill"] == 62 and numbers["getdents64"] == 217
    assert numbers["execve"] == 59 and numbers["openat"] == 257
    assert sum(e.nr is not None for e in entries) >= 360
    # what is left as a range is the default case: sys_ni_syscall
    assert {e.syscall for e in entries if e.nr is None} == {"ni_syscall"}


def test_no_number_is_served_twice(entries: list[DispatchEntry]) -> None:
    numbers = [e.nr for e in entries if e.nr is not None]
    assert len(numbers) == len(set(numbers))


def test_retargeted_kill_is_reported_as_a_syscall_hook(
    captured: dict[str, Any], entries: list[DispatchEntry], symbols: SymbolTable
) -> None:
    start = int(captured["start"], 16)
    code = bytes.fromhex(captured["code"])
    kill = next(e for e in entries if e.syscall == "kill")
    assert code[kill.insn - start] == 0xE9  # jmp rel32 __x64_sys_kill
    rel = EVIL - (kill.insn + 5)
    patched = bytearray(code)
    patched[kill.insn - start + 1 : kill.insn - start + 5] = rel.to_bytes(4, "little", signed=True)

    def read(address: int, size: int) -> bytes:
        return bytes(patched[address - start : address - start + size])

    runs = diff_runs(code, bytes(patched), start)
    verdicts = explain(runs, SiteIndex(), symbols, read)
    assert len(verdicts) == 1 and not verdicts[0].explained
    finding = dispatch_finding(verdicts[0], entries, read, symbols)
    assert finding is not None
    assert finding.technique == "syscall-hook" and finding.severity.label == "critical"
    assert finding.summary == (
        "x64_sys_call: syscall 62 (kill) redirected from __x64_sys_kill to evil_hook+0x0"
    )
    assert finding.evidence["nr"] == 62 and finding.evidence["baseline_target"] == "__x64_sys_kill"


def test_change_elsewhere_is_not_called_a_syscall_hook(
    captured: dict[str, Any], entries: list[DispatchEntry], symbols: SymbolTable
) -> None:
    start = int(captured["start"], 16)
    code = bytes.fromhex(captured["code"])
    patched = bytearray(code)
    patched[0] = 0xCC  # the first cmp, not a dispatch jump

    runs = diff_runs(code, bytes(patched), start)
    verdicts = explain(runs, SiteIndex(), symbols, lambda a, n: bytes(patched[a - start :][:n]))
    assert not verdicts[0].explained
    assert dispatch_finding(verdicts[0], entries, lambda a, n: None, symbols) is None


def test_surface_flags_a_target_outside_syscall_functions() -> None:
    good = SyscallTarget(
        "x64_sys_call", 62, 62, 0xFFFFFFFF8124A000, 0xFFFFFFFF81300000, "__x64_sys_kill", True
    )
    bad = SyscallTarget(
        "sys_call_table",
        217,
        217,
        0xFFFFFFFF82200000 + 8 * 217,
        0xFFFFFFFFC0A00000,
        "hook_getdents64+0x0 [rk]",
        False,
    )
    findings = SyscallsSurface().assess(SurfaceState("syscalls", (good, bad)))
    assert [f.subject for f in findings] == ["sys_call_table: syscall 217"]
    assert "hook_getdents64" in findings[0].summary
    assert findings[0].evidence["slot"] == f"{0xFFFFFFFF82200000 + 8 * 217:#x}"


def test_address_after_reads_the_next_line(symbols: SymbolTable, captured: dict[str, Any]) -> None:
    start = int(captured["start"], 16)
    assert symbols.address_after(start) == start + len(bytes.fromhex(captured["code"]))
    assert symbols.address_after(start + 1) is None  # not a symbol address


def test_redirect_is_named_by_the_jump_that_changed_not_its_neighbour(
    captured: dict[str, Any], entries: list[DispatchEntry], symbols: SymbolTable
) -> None:
    """Found in the lab: a verdict's bytes reach past the change into the next dispatch jump;
    the finding must name the syscall whose jump changed."""
    start = int(captured["start"], 16)
    code = bytes.fromhex(captured["code"])
    by_insn = {e.insn: e for e in entries if e.nr is not None}
    # a jump right before another one that serves a lower number (listed first)
    hooked, neighbour = next(
        (e, by_insn[e.insn + e.size])
        for e in by_insn.values()
        if e.insn + e.size in by_insn and by_insn[e.insn + e.size].lo < e.lo
    )
    patched = bytearray(code)
    at = hooked.insn - start
    patched[at + 1 : at + 5] = (EVIL - (hooked.insn + 5)).to_bytes(4, "little", signed=True)

    def read(address: int, size: int) -> bytes:
        return bytes(patched[address - start : address - start + size])

    verdicts = explain(diff_runs(code, bytes(patched), start), SiteIndex(), symbols, read)
    finding = dispatch_finding(verdicts[0], entries, read, symbols)
    assert finding is not None and finding.evidence["nr"] == hooked.nr != neighbour.nr
    assert f"syscall {hooked.nr} ({hooked.syscall})" in finding.summary


def _patched_slot(via: str) -> SyscallTarget:
    return SyscallTarget(via, 62, 62, 0xFFFFFFFF82200000 + 62 * 8, EVIL, "evil_hook", False)


def test_a_patched_table_the_kernel_no_longer_reads_is_said_as_unused() -> None:
    dispatched = SyscallTarget(
        "x64_sys_call", 62, 62, 0xFFFFFFFF81001000, 1, "__x64_sys_kill", True
    )
    (unused,) = SyscallsSurface().assess(
        SurfaceState("syscalls", (dispatched, _patched_slot("sys_call_table")))
    )
    assert unused.severity.label == "critical" and unused.technique == "syscall-hook"
    assert "dispatches system calls through code (x64_sys_call), not through sys_call_table" in (
        unused.summary
    )
    assert unused.evidence["live"] is False and unused.evidence["dispatch"] == "x64_sys_call"
    # without dispatch through code the table is what the kernel calls through
    (live,) = SyscallsSurface().assess(SurfaceState("syscalls", (_patched_slot("sys_call_table"),)))
    assert live.summary.startswith("syscall 62 goes through sys_call_table to evil_hook")
    assert live.evidence["live"] is True
