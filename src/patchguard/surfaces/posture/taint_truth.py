"""Taint cross-checked: the global taint against what the modules themselves carry.

The global value is `tainted_mask` read from kernel memory (kernel/taint.py), else
/proc/sys/kernel/tainted, and the finding says which. The evidence is each loaded module's own
taint: `struct module.taints` in memory, /sys/module/<name>/taint and /proc/modules' column.
Every module taint bit is also set in the global mask when the module loads and is never
cleared by the kernel, so a global value lacking one is taint flags cleared by someone. A
/proc/sys/kernel/tainted that disagrees with memory is a view that lies to this process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from patchguard.findings import Disposition, Finding
from patchguard.kernel.attribution import struct_modules
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.proc_modules import PROC_MODULES, parse_proc_modules
from patchguard.kernel.taint import global_taint, module_taint
from patchguard.surfaces.base import finding
from patchguard.surfaces.posture.parsers import TAINT_BITS
from patchguard.surfaces.posture.paths import NAME, TAINTED
from patchguard.surfaces.posture.records import (
    MemoryTaintValue,
    ModuleTaint,
    PostureRecords,
)
from patchguard.surfaces.reading import Reading

LETTER_BITS = {letter: bit for bit, (letter, _) in TAINT_BITS.items()}


def letters_value(letters: str) -> int:
    return sum(1 << LETTER_BITS[ch] for ch in set(letters) if ch in LETTER_BITS)


def value_letters(value: int) -> str:
    return "".join(letter for bit, (letter, _) in sorted(TAINT_BITS.items()) if value >> bit & 1)


def collect(r: Reading) -> None:
    """The memory value and every module's taint from each view that shows it (memory only
    on the live kernel: a captured tree has none)."""
    if r.kernel.live:
        try:
            found = global_taint(r.kernel)
            r.records.append(MemoryTaintValue(found.value, found.source))
        except (KernelAccessError, OSError) as exc:
            r.gap("taint in kernel memory (tainted_mask)", str(exc))
    text = r.optional(PROC_MODULES) or ""
    listed = parse_proc_modules(text)
    r.records.extend(
        ModuleTaint(m.name, letters_value(m.taints), PROC_MODULES) for m in listed if m.taints
    )
    for m in listed:
        letters = r.optional(f"/sys/module/{m.name}/taint")
        if letters and letters.strip():
            path = f"/sys/module/{m.name}/taint"
            r.records.append(ModuleTaint(m.name, letters_value(letters.strip()), path))
    _collect_structs(r, [m.name for m in listed])


def _collect_structs(r: Reading, names: Sequence[str]) -> None:
    if not names or not r.kernel.live:
        return
    try:
        btf, memory = r.kernel.vmlinux_btf, r.kernel.memory()
        name_at, taints_at = (btf.member_offset("module", m) for m in ("name", "taints"))
        structs = struct_modules(r.kernel, names)
    except (KernelAccessError, OSError, ValueError) as exc:
        r.gap("module taints in kernel memory (struct module)", str(exc))
        return
    if name_at is None or taints_at is None:
        r.gap("module taints in kernel memory", "vmlinux BTF has no struct module.taints")
        return
    for name, address in structs.items():
        with contextlib.suppress(KernelAccessError):
            value = module_taint(memory, name_at, taints_at, address, name)
            r.records.append(ModuleTaint(name, value, "struct module"))


def cross_check(records: PostureRecords) -> list[Finding]:
    memory, procfs = records.memory_taint, records.taint
    out = []
    if memory is not None and procfs is not None and memory.value != procfs.value:
        out.append(_view_lies(memory, procfs.value))
    if memory is not None:
        value, source = memory.value, f"{memory.source} in kernel memory"
    elif procfs is not None:
        value, source = procfs.value, f"{TAINTED} (kernel memory could not be read)"
    else:
        return out
    evidence = [m for m in records.module_taints if m.value & ~value]
    if evidence:
        out.append(_cleared(value, source, evidence))
    return out


def _cleared(value: int, source: str, evidence: Sequence[ModuleTaint]) -> Finding:
    missing = 0
    for m in evidence:
        missing |= m.value & ~value
    shown = sorted({(m.module, value_letters(m.value), m.source) for m in evidence})
    said = "; ".join(f"{name} carries {letters} ({src})" for name, letters, src in shown[:8])
    return finding(
        NAME,
        "taint-flags-cleared",
        "kernel taint",
        f"The kernel's taint is {value} ({value_letters(value) or 'clean'}, from {source}) but "
        f"loaded modules carry {value_letters(missing)}, which the kernel sets in the global "
        f"taint when it loads them and never clears: {said}. Someone cleared the taint flags.",
        {
            "global_taint": value,
            "global_source": source,
            "missing": value_letters(missing),
            "modules": [f"{name} {letters} ({src})" for name, letters, src in shown],
        },
        disposition=Disposition.TAMPERING,
    )


def _view_lies(memory: MemoryTaintValue, shown: int) -> Finding:
    return finding(
        NAME,
        "filtered-view",
        TAINTED,
        f"{TAINTED} as read by this process says {shown} "
        f"({value_letters(shown) or 'clean'}), but {memory.source} in kernel memory holds "
        f"{memory.value} ({value_letters(memory.value) or 'clean'}): the file view lies.",
        {"view": TAINTED, "view_value": shown, "memory_value": memory.value},
        disposition=Disposition.TAMPERING,
    )
