"""Module code in the baseline: each live module's text, jump table and static call sites as
regions `module_text.<name>`, `module_jump_table.<name>` and `module_static_call_sites.<name>`.

A module's text is checked like core text, its tables explain its own patch sites. Modules
come and go legitimately: a module the baseline has that is gone or now elsewhere, and a live
module the baseline lacks, are said (info, with their addresses), never compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchguard.findings import Disposition, Finding, Gap, Severity
from patchguard.integrity.store import RegionEntry
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.memory import KernelMemory
from patchguard.kernel.proc_modules import PROC_MODULES, parse_proc_modules

# struct module's layout (and the BTF it is derived from) is imported only once a module is
# live: a kernel without modules, as here, checks without it
if TYPE_CHECKING:
    from patchguard.kernel.module_layout import Layout, ModuleText

# The kernel_text surface's name (surfaces/kernel_text.py), said here so that a check does not
# import that surface and its ftrace site reader; tests/unit/test_lazy_imports.py holds the two
# equal.
NAME = "kernel_text"

TEXT, JUMPS, CALLS = "module_text.", "module_jump_table.", "module_static_call_sites."


def is_text(region: str) -> bool:
    return region == "core_text" or region.startswith(TEXT)


def module_of(region: str) -> str | None:
    for prefix in (TEXT, JUMPS, CALLS):
        if region.startswith(prefix):
            return region[len(prefix) :]
    return None


@dataclass(frozen=True)
class LiveModules:
    modules: dict[str, ModuleText]
    gaps: list[Gap]


# A module's struct module read in batches of this many (the in-kernel hasher's copy: one run)
GATHER_BATCH = 64
Gather = Callable[[Sequence[tuple[int, int]]], list[bytes | None]]
KnownStructs = dict[str, tuple[int, int]]  # name -> (its /proc/modules address, struct module)


def module_listing(kernel: Kernel) -> str | None:
    """/proc/modules as it reads now (None: no module support)."""
    try:
        return kernel.read_text(PROC_MODULES)
    except KernelAccessError:
        return None


def live_modules(
    kernel: Kernel,
    known: KnownStructs | None = None,
    gather: Gather | None = None,
    listing: str | None = None,
    offsets: Layout | None = None,
) -> LiveModules:
    """Every Live module's text and tables; a module that cannot be read is a gap.

    `known` (the guard's, kept across sweeps): where each module's struct module was, kept
    while /proc/modules shows the module at the same address and the struct read there names
    it and starts its text at that address; the others are looked up in kallsyms (the
    guard's sweep then reads no kallsyms at all while no module came or went). `gather`:
    the structs read in one run each GATHER_BATCH, not one run each (without one, six a run
    through the eBPF memory reader). `listing`: /proc/modules, if the caller read it.
    `offsets`: struct module's layout as a baseline of this boot recorded it (check), else
    derived from vmlinux BTF."""
    listing = listing if listing is not None else module_listing(kernel)
    if listing is None:
        return LiveModules({}, [])  # no module support: nothing to baseline (modules says so)
    live = {m.name: m.address for m in parse_proc_modules(listing) if m.state == "Live"}
    if not live:
        return LiveModules({}, [])
    from patchguard.kernel.module_layout import ModuleText, layout

    try:
        offsets = offsets or kernel.vmlinux_btf.derived(layout)  # once a kernel: ~20 ms
        memory = kernel.memory()
    except (KernelAccessError, OSError, ValueError) as exc:
        return LiveModules({}, [Gap(NAME, "module_text", f"module layout unknown: {exc}")])
    reads = _StructReads(memory, offsets, gather or _reader_gather(memory))
    found = _from_known(reads, live, known or {})
    looked_up = _struct_addresses(kernel, [n for n in live if n not in found])
    read = reads.read({n: a for n, a in looked_up.items() if isinstance(a, int)})
    read |= {n: e for n, e in looked_up.items() if not isinstance(e, int)}
    found |= {n: m for n, m in read.items() if isinstance(m, ModuleText)}
    if known is not None:
        known.clear()
        for name, module in found.items():
            if (at := live[name]) is not None:
                known[name] = (at, module.module)
    gaps = [Gap(NAME, TEXT + n, str(e)) for n, e in read.items() if isinstance(e, Exception)]
    return LiveModules({n: found[n] for n in live if n in found}, gaps)


def _reader_gather(memory: KernelMemory) -> Gather | None:
    """A check's gather (it has no in-kernel hasher): the eBPF reader's, six a run."""
    from patchguard.kernel.bpf.reader import EbpfReader

    return memory.read_many if isinstance(memory, EbpfReader) else None


def _from_known(
    reads: _StructReads, live: dict[str, int | None], known: KnownStructs
) -> dict[str, ModuleText]:
    """The modules still where `known` says: same /proc/modules address, and the struct read
    there names the module and starts its text at that address (any other: looked up)."""
    from patchguard.kernel.module_layout import ModuleText

    cached = {n: s for n, (at, s) in known.items() if live.get(n) == at}
    read = reads.read(cached)
    return {n: m for n, m in read.items() if isinstance(m, ModuleText) and m.text == live[n]}


def _struct_addresses(kernel: Kernel, names: list[str]) -> dict[str, int | KernelAccessError]:
    """Where each module's struct module is: its __this_module in kallsyms (one search for
    all), else its sysfs section address."""
    if not names:
        return {}
    from patchguard.kernel.module_layout import struct_module_address

    try:
        symbols = kernel.kallsyms.find("__this_module")
    except (KernelAccessError, OSError):
        symbols = []  # sysfs still says where each is
    structs = {s.module: s.address for s in symbols if s.module}
    found: dict[str, int | KernelAccessError] = {}
    for name in names:
        address = structs.get(name) or struct_module_address(_sysfs_struct_address(kernel, name))
        found[name] = address or KernelAccessError(
            name, "no __this_module symbol or sysfs section address"
        )
    return found


@dataclass(frozen=True)
class _StructReads:
    """Struct modules read: one memory read each, or gathered in batches."""

    memory: KernelMemory
    offsets: Layout
    gather: Gather | None

    def read(self, addresses: dict[str, int]) -> dict[str, ModuleText | KernelAccessError]:
        from patchguard.kernel.module_layout import parse_module

        raws = self._raws(list(addresses.values()))
        found: dict[str, ModuleText | KernelAccessError] = {}
        for (name, address), raw in zip(addresses.items(), raws, strict=True):
            try:
                data = raw if raw is not None else self.memory.read(address, self.offsets.span)
                found[name] = parse_module(data, self.offsets, name, address)
            except KernelAccessError as exc:
                found[name] = exc
        return found

    def _raws(self, addresses: list[int]) -> list[bytes | None]:
        """Gathered where a gather is given (None: read it alone, so its error says why)."""
        if self.gather is None:
            return [None] * len(addresses)
        raws: list[bytes | None] = []
        for at in range(0, len(addresses), GATHER_BATCH):
            batch = addresses[at : at + GATHER_BATCH]
            try:
                raws += self.gather([(a, self.offsets.span) for a in batch])
            except (KernelAccessError, ValueError):  # refused, or too big: each read alone
                raws += [None] * len(batch)
        return raws


def _sysfs_struct_address(kernel: Kernel, name: str) -> str | None:
    try:
        return kernel.read_text(f"/sys/module/{name}/sections/.gnu.linkonce.this_module")
    except KernelAccessError:
        return None


def region_bounds(module: ModuleText) -> list[tuple[str, int, int]]:
    """(region name, start, end) of what a baseline keeps of `module`."""
    bounds = [(TEXT + module.name, module.text, module.text + module.text_size)]
    if module.jump_entries:
        end = module.jump_table + module.jump_table_size
        bounds.append((JUMPS + module.name, module.jump_table, end))
    if module.static_call_count:
        end = module.static_call_sites + module.static_call_size
        bounds.append((CALLS + module.name, module.static_call_sites, end))
    return bounds


def stale_modules(
    regions: Mapping[str, RegionEntry], live: Mapping[str, ModuleText]
) -> tuple[set[str], list[Finding]]:
    """The baseline's modules that cannot be compared (gone, or loaded again elsewhere), and
    the live modules the baseline does not have, each said as an info finding."""
    stale: set[str] = set()
    findings: list[Finding] = []
    for name, entry in regions.items():
        if not name.startswith(TEXT):
            continue
        module = name[len(TEXT) :]
        now = live.get(module)
        if now is not None and (now.text, now.text_size) == (entry.start, entry.size):
            continue
        stale.add(module)
        where = f"now {now.text_size} bytes at {now.text:#x}" if now else "no longer loaded"
        findings.append(
            _info(
                "module-text-not-compared",
                module,
                f"module {module} is {where} (baseline: {entry.size} bytes at {entry.start:#x}): "
                "its text is not compared; take a new baseline to cover it",
                {"module": module, "baseline_text": f"{entry.start:#x}", "size": entry.size},
            )
        )
    for module, now in live.items():
        if TEXT + module not in regions:
            findings.append(
                _info(
                    "module-not-in-baseline",
                    module,
                    f"module {module} was loaded after the baseline: its text is not verified",
                    {"module": module, "text": f"{now.text:#x}", "size": now.text_size},
                )
            )
    return stale, findings


def _info(technique: str, module: str, message: str, evidence: dict[str, str | int]) -> Finding:
    return Finding(
        NAME,
        technique,
        Severity.INFO,
        f"module {module}",
        message,
        Disposition.UNAVAILABLE,
        None,
        dict(evidence),
    )
