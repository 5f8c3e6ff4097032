"""Run INSIDE the lab guest (by test_lab_boot.py through lab/run): the facts the lab promises,
printed as one JSON object on stdout. Each fact is measured, not asserted, so the host test
can say which one failed; an exception is recorded as that fact's error."""

from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from patchguard.kernel.bpf.reader import EbpfReader
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.kcore import KcoreReader

MSR_LSTAR = 0xC0000082
facts: dict[str, Any] = {"kernel_release": platform.release()}


def fact(name: str, measure: Callable[[], Any]) -> None:
    try:
        facts[name] = measure()
    except Exception as exc:
        facts[name] = None
        facts.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"


symbols = SymbolTable.parse(Path("/proc/kallsyms").read_text())
stext = symbols.address_of("_stext") or 0
facts["stext"] = hex(stext)
facts["kaslr"] = stext not in (0, 0xFFFFFFFF81000000)
for name in ("sys_call_table", "idt_table", "x64_sys_call", "entry_SYSCALL_64"):
    facts[f"has_{name}"] = symbols.address_of(name) is not None


def read_with(opener: Callable[[], Any]) -> str:
    reader = opener()
    try:
        return bytes(reader.read(stext, 16)).hex()
    finally:
        reader.close()


fact("kcore_stext", lambda: read_with(KcoreReader.open))
fact("ebpf_stext", lambda: read_with(EbpfReader.open))
fact(
    "kprobes_list_readable", lambda: Path("/sys/kernel/debug/kprobes/list").read_text() is not None
)
fact(
    "enabled_functions_readable",
    lambda: Path("/sys/kernel/tracing/enabled_functions").read_text() is not None,
)


def msr() -> dict[str, Any]:
    subprocess.run(["modprobe", "msr"], check=True)
    lstar: list[str] = []
    for cpu in range(os.cpu_count() or 1):
        fd = os.open(f"/dev/cpu/{cpu}/msr", os.O_RDONLY)
        try:
            lstar.append(hex(struct.unpack("<Q", os.pread(fd, 8, MSR_LSTAR))[0]))
        finally:
            os.close(fd)
    return {
        "dev_cpu0_msr": os.path.exists("/dev/cpu/0/msr"),
        "lstar": lstar,
        "entry_SYSCALL_64": hex(symbols.address_of("entry_SYSCALL_64") or 0),
    }


fact("msr", msr)
fact("lockdown", lambda: Path("/sys/kernel/security/lockdown").read_text().strip())
fact("taint", lambda: int(Path("/proc/sys/kernel/tainted").read_text()))
print(json.dumps(facts, indent=2))
