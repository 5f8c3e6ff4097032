"""The entry surface's pure parts: IDT gate decoding, online CPU lists, and its findings."""

from __future__ import annotations

import struct
from pathlib import Path

from patchguard.findings import Severity
from patchguard.kernel import Kernel
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.entry import (
    EntryRecords,
    EntrySurface,
    IdtGate,
    MsrValue,
    cpus,
    decode_gate,
)

FIXTURE = Path(__file__).parent.parent / "fixtures" / "6.18-fc"


def test_decode_gate_joins_the_three_offset_parts() -> None:
    handler = 0xFFFFFFFF81000C60  # asm_exc_page_fault on 6.18-fc
    raw = struct.pack(
        "<HHHHII", handler & 0xFFFF, 0x10, 0x8E00, (handler >> 16) & 0xFFFF, handler >> 32, 0
    )
    assert decode_gate(raw) == handler


def test_online_cpus(tmp_path: Path) -> None:
    online = tmp_path / "sys/devices/system/cpu/online"
    online.parent.mkdir(parents=True)
    online.write_text("0-3,6,8-9\n")
    assert cpus(Kernel(tmp_path)) == [0, 1, 2, 3, 6, 8, 9]


def test_findings_for_a_redirected_msr_and_idt_gate() -> None:
    good = MsrValue(0, "MSR_LSTAR", 0xFFFFFFFF81000080, "entry_SYSCALL_64", ("entry_SYSCALL_64",))
    bad = MsrValue(1, "MSR_LSTAR", 0xFFFFFFFFC0A00000, "evil_entry", ("entry_SYSCALL_64",))
    gate = IdtGate(14, 0xFFFFFFFFC0A00100, "hook+0x0 [evil]", False)
    state = SurfaceState(
        "entry",
        EntryRecords.of([good, bad, gate, IdtGate(3, 0xFFFFFFFF81000100, "x", True)]),
    )
    found = {f.subject: f for f in EntrySurface().assess(state)}
    assert set(found) == {"MSR_LSTAR on CPU 1", "IDT vector 14"}
    assert found["MSR_LSTAR on CPU 1"].severity == Severity.CRITICAL
    assert "evil_entry" in found["MSR_LSTAR on CPU 1"].summary
    assert found["IDT vector 14"].technique == "idt-hijack"


def test_captured_tree_reports_why_nothing_was_read() -> None:
    state = EntrySurface().collect(Kernel(FIXTURE))
    reasons = {g.what: g.reason for g in state.gaps}
    assert reasons["syscall entry MSRs"] == "MSRs are read only on the live kernel"
    assert "CONFIG_KALLSYMS_ALL" in reasons["IDT"]
