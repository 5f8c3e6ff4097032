"""Syscall entry points and the interrupt table: PatchGuard's "critical MSRs" and IDT.

MSR_LSTAR (64-bit SYSCALL), MSR_CSTAR (compat SYSCALL) and MSR_IA32_SYSENTER_EIP hold the
addresses the CPU jumps to on a system call; a rootkit that rewrites them owns every syscall
without touching kernel text. Each CPU's value, read through /dev/cpu/N/msr (the `msr`
module), must be the entry point kallsyms names. The IDT (`idt_table`, visible with
CONFIG_KALLSYMS_ALL) must send every vector into kernel text.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from patchguard.findings import Disposition, Finding, Gap
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.errors import oserror_reason
from patchguard.surfaces.base import RecordSet, SurfaceState, finding

NAME = "entry"
# MSR number -> (name, entry points kallsyms may name for it)
ENTRY_MSRS = {
    0xC0000082: ("MSR_LSTAR", ("entry_SYSCALL_64",)),
    0xC0000083: ("MSR_CSTAR", ("entry_SYSCALL_compat", "ignore_sysret")),
    0x00000176: ("MSR_IA32_SYSENTER_EIP", ("entry_SYSENTER_compat", "entry_SYSENTER_32")),
}
IDT_VECTORS = 256
GATE_SIZE = 16  # struct gate_struct on x86-64


@dataclass(frozen=True)
class MsrValue:
    cpu: int
    msr: str
    value: int
    symbol: str | None  # kallsyms name at that address (offset 0), if any
    expected: tuple[str, ...]
    module: str | None = None  # the module of that symbol: where a redirect leads

    @property
    def ok(self) -> bool:
        return self.symbol in self.expected


@dataclass(frozen=True)
class IdtGate:
    vector: int
    handler: int
    location: str | None  # symbol+offset
    in_text: bool
    # An exception vector the kernel never set up after boot (#VE without TDX, #CP without
    # CET, the reserved ones) keeps the early boot handler it got first, in freed init text:
    # the CPU never raises it there, so it is recorded, not reported.
    early_boot: bool = False

    @property
    def ok(self) -> bool:
        return self.in_text or self.early_boot


def cpus(kernel: Kernel) -> list[int]:
    """Online CPUs from /sys/devices/system/cpu/online ("0-3,6")."""
    text = kernel.read_text("/sys/devices/system/cpu/online").strip()
    found: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        found += range(int(lo), int(hi or lo) + 1)
    return found


def decode_gate(raw: bytes) -> int:
    """The handler address of one x86-64 IDT gate (offset_low, segment, bits, offset_middle,
    offset_high, reserved)."""
    low, _seg, _bits, middle, high, _ = struct.unpack("<HHHHII", raw)
    return int(low | (middle << 16) | (high << 32))


def _ensure_msr_device(kernel: Kernel) -> str | None:
    if os.path.exists("/dev/cpu/0/msr"):
        return None
    if not os.path.isdir("/lib/modules"):
        return (
            "no /dev/cpu/*/msr and this kernel has no loadable modules to provide it "
            "(CONFIG_X86_MSR=m needs `modprobe msr`)"
        )
    import subprocess  # only where modprobe is run, not with every scan's imports

    done = subprocess.run(["modprobe", "msr"], capture_output=True, text=True, check=False)
    if not os.path.exists("/dev/cpu/0/msr"):
        why = done.stderr.strip() or f"exit {done.returncode}"
        return f"no /dev/cpu/*/msr, and `modprobe msr` failed: {why}"
    return None


def read_msrs(kernel: Kernel, gaps: list[Gap]) -> list[MsrValue]:
    reason = _ensure_msr_device(kernel) if kernel.live else "MSRs are read only on the live kernel"
    if reason:
        gaps.append(Gap(NAME, "syscall entry MSRs", reason))
        return []
    values: list[MsrValue] = []
    for cpu in cpus(kernel):
        try:
            fd = os.open(f"/dev/cpu/{cpu}/msr", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            gaps.append(Gap(NAME, f"MSRs of CPU {cpu}", oserror_reason(exc)))
            continue
        try:
            for number, (msr, expected) in ENTRY_MSRS.items():
                try:
                    value = struct.unpack("<Q", os.pread(fd, 8, number))[0]
                except OSError as exc:  # EIO: this CPU does not have it (no compat, no 32-bit)
                    gaps.append(Gap(NAME, f"{msr} on CPU {cpu}", oserror_reason(exc)))
                    continue
                symbol, module = _entry_name(kernel, value, expected)
                values.append(MsrValue(cpu, msr, value, symbol, expected, module))
        finally:
            os.close(fd)
    return values


def _entry_name(
    kernel: Kernel, value: int, expected: tuple[str, ...]
) -> tuple[str | None, str | None]:
    """(symbol, module) of what starts at `value`: the expected entry point among its aliases
    (the kernel names one of them; kallsyms lists them all), else the one named."""
    named = kernel.names([value]).get(value)
    if named is None or named.offset:
        return None, None
    if named.name not in expected:
        alias = next((s for s in kernel.kallsyms.at(value) if s.name in expected), None)
        if alias is not None:
            return alias.name, alias.module
    return named.name, named.module


def read_idt(kernel: Kernel, gaps: list[Gap]) -> list[IdtGate]:
    idt = kernel.symbol_address("idt_table")
    if idt is None:
        gaps.append(
            Gap(
                NAME,
                "IDT",
                "idt_table is not in kallsyms (built without "
                "CONFIG_KALLSYMS_ALL): the interrupt table cannot be found",
            )
        )
        return []
    try:
        raw = kernel.memory().read(idt, IDT_VECTORS * GATE_SIZE)
    except KernelAccessError as exc:
        gaps.append(Gap(NAME, "IDT", str(exc)))
        return []
    text = kernel.range("text")
    handlers = [decode_gate(raw[v * GATE_SIZE : (v + 1) * GATE_SIZE]) for v in range(IDT_VECTORS)]
    names = kernel.names(h for h in handlers if h)
    gates = []
    for vector, handler in enumerate(handlers):
        if handler == 0:
            continue  # not set up: the CPU raises #GP for it
        loc = names.get(handler)
        early = vector < 32 and loc is not None and loc.name == "early_idt_handler_array"
        gates.append(
            IdtGate(
                vector,
                handler,
                str(loc) if loc else None,
                text is not None and handler in text,
                early,
            )
        )
    return gates


def _where(r: MsrValue) -> str:
    if r.symbol is None:
        return f"{r.value:#x}, which no kernel or module symbol covers"
    return f"{r.symbol} [{r.module}]" if r.module else r.symbol


@dataclass(frozen=True)
class EntryRecords(RecordSet):
    """The entry surface's records by kind."""

    msrs: tuple[MsrValue, ...] = ()
    idt: tuple[IdtGate, ...] = ()


class EntrySurface:
    name = NAME
    title = "Syscall entry MSRs and IDT"

    def prepare(self, kernel: Kernel) -> None:
        """`modprobe msr` before any view of the modules is read (scan.prepare_surfaces): the
        module it loads is then in every view, not only in those read after it."""
        if kernel.live:
            _ensure_msr_device(kernel)

    def collect(self, kernel: Kernel) -> SurfaceState[EntryRecords]:
        gaps: list[Gap] = []
        try:
            records = EntryRecords(tuple(read_msrs(kernel, gaps)), tuple(read_idt(kernel, gaps)))
        except KernelAccessError as exc:
            gaps.append(Gap(NAME, "entry points", str(exc)))
            return SurfaceState(NAME, EntryRecords(), gaps=gaps)
        counts = {"msr_values": len(records.msrs), "idt_gates": len(records.idt)}
        return SurfaceState(NAME, records, counts, gaps)

    def assess(self, state: SurfaceState[EntryRecords]) -> list[Finding]:
        msrs = [_msr_finding(r) for r in state.records.msrs if not r.ok]
        return msrs + [_idt_finding(g) for g in state.records.idt if not g.ok]


def _msr_finding(r: MsrValue) -> Finding:
    return finding(
        NAME,
        "syscall-entry-hijack",
        f"{r.msr} on CPU {r.cpu}",
        f"{r.msr} points at {_where(r)}, not at {' or '.join(r.expected)}: "
        "every system call goes through it first",
        {"value": f"{r.value:#x}", "symbol": r.symbol, "module": r.module, "cpu": r.cpu},
        disposition=Disposition.TAMPERING,
    )


def _idt_finding(g: IdtGate) -> Finding:
    return finding(
        NAME,
        "idt-hijack",
        f"IDT vector {g.vector}",
        f"IDT vector {g.vector} sends the CPU to {g.location or hex(g.handler)}, "
        "outside kernel text",
        {"handler": f"{g.handler:#x}", "location": g.location},
        disposition=Disposition.TAMPERING,
    )
