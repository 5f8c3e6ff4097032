"""/proc/modules: the kernel's module list as text, and naming a hook's function from a namer
that bounds symbols (kernel/attribution.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from patchguard.kernel.kallsyms import Location

PROC_MODULES = "/proc/modules"


class Named(Protocol):
    def lookup(self, address: int) -> Location | None: ...


@dataclass(frozen=True)
class ProcModule:
    """One line of /proc/modules: `name size refcount deps state address [(taints)]`."""

    name: str
    size: int
    refcount: int | None  # None: "-", a kernel without module unloading
    users: tuple[str, ...]  # modules that use this one; "[permanent]" when it cannot unload
    state: str  # Live, Loading, Unloading
    address: int | None  # core base; None when kptr_restrict prints zeros
    taints: str = ""  # module taint letters, e.g. "OE"


def _proc_module(line: str) -> ProcModule | None:
    fields = line.split()
    if len(fields) < 6 or not fields[1].isdigit():
        return None
    taints = fields[6] if len(fields) > 6 else ""
    return ProcModule(
        name=fields[0],
        size=int(fields[1]),
        refcount=int(fields[2]) if fields[2].lstrip("-").isdigit() else None,
        users=tuple(u for u in fields[3].split(",") if u and u != "-"),
        state=fields[4],
        address=int(fields[5], 16) or None,
        # "(OE)", and "+"/"-" for a module coming or going on kernels that show the state.
        taints="".join(ch for ch in taints if ch.isalpha()),
    )


def function_name(address: int, names: Named) -> tuple[str, str | None]:
    """(function, module) of a hook: a symbol whose extent holds the address (attribution by
    bounds), else the bare address (code no listed module or the kernel holds)."""
    loc = names.lookup(address)
    if loc is None:
        return f"{address:#x}", None
    name = loc.symbol.name if loc.offset == 0 else str(loc).split(" [")[0]
    return name, loc.symbol.module


def parse_proc_modules(text: str) -> list[ProcModule]:
    """/proc/modules, e.g. `msr 16384 0 - Live 0xffffffffc0a05000 (E)`."""
    return [m for m in map(_proc_module, text.splitlines()) if m is not None]
