"""Reading the four module views into records, with a gap for what could not be read."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from patchguard.kernel.errors import KernelAccessError, is_enoent
from patchguard.kernel.kallsyms import PSEUDO_MODULES
from patchguard.kernel.module_layout import memory_layout, memory_ranges
from patchguard.kernel.module_symbols import layout, modules_head, walk_modules
from patchguard.surfaces.reading import Reading, records_of

if TYPE_CHECKING:
    from patchguard.kernel import Kernel
from patchguard.kernel.proc_modules import PROC_MODULES, ProcModule, parse_proc_modules
from patchguard.kernel.vmallocinfo import VmallocArea, distinct, placed
from patchguard.surfaces.modules.parse import (
    areas_per_module,
    kallsyms_module_names,
    loader_areas,
    parse_taint_letters,
    parse_vmallocinfo,
    unaccounted_areas,
)
from patchguard.surfaces.modules.paths import (
    INIT_SECTIONS,
    KALLSYMS,
    KALLSYMS_VIEW,
    LOADER_CALLERS,
    LOADER_SYMBOLS,
    NO_MODULE_SUPPORT,
    OSRELEASE,
    PROC_VIEW,
    SYS_MODULE,
    SYSFS_VIEW,
    VMALLOC_CALLER_VIEW,
    VMALLOCINFO,
)
from patchguard.surfaces.modules.records import ModuleListMissing, ModuleMemory, SysfsModule
from patchguard.surfaces.modules.rules import TRANSIENT_STATES

# --- collect ------------------------------------------------------------------------------------


@dataclass
class _Reading(Reading):
    full: dict[str, set[str]] = field(default_factory=dict)  # view -> every module it shows
    partial: dict[str, set[str]] = field(default_factory=dict)  # views that can only add


def _loader_symbols(kernel: Kernel) -> tuple[str, ...] | None:
    """Which LOADER_SYMBOLS the kernel has; None if neither it nor kallsyms can say."""
    try:
        return tuple(s for s in LOADER_SYMBOLS if kernel.symbol_address(s) is not None)
    except KernelAccessError:
        return None


def _collect_proc(r: _Reading) -> None:
    what = "loadable module list (/proc/modules)"
    try:
        text = r.kernel.read_text(PROC_MODULES)
    except KernelAccessError as exc:
        if not is_enoent(exc):
            r.gap(what, str(exc))
            return
        loader = _loader_symbols(r.kernel)
        if not loader:
            r.gap(what, NO_MODULE_SUPPORT)
            return
        # A kernel with a module loader always has /proc/modules; a rootkit can remove it.
        r.gap(what, f"/proc/modules absent although the module loader is built ({loader[0]})")
        r.records.append(ModuleListMissing(loader))
        return
    modules = parse_proc_modules(text)
    r.records.extend(modules)
    r.full[PROC_VIEW] = {m.name for m in modules}


def _sysfs_module(r: _Reading, name: str) -> SysfsModule | None:
    base = f"{SYS_MODULE}/{name}"
    initstate = r.optional(f"{base}/initstate")
    if initstate is None:
        return None  # built in: sysfs lists it for its parameters, it was never loaded
    taint = r.optional(f"{base}/taint") or ""
    coresize = (r.optional(f"{base}/coresize") or "").strip()
    return SysfsModule(
        name, initstate.strip(), parse_taint_letters(taint), int(coresize) if coresize else None
    )


def _collect_sysfs(r: _Reading) -> None:
    try:
        names = sorted(p.name for p in r.kernel.path(SYS_MODULE).iterdir())
    except OSError as exc:
        r.gap("module list in sysfs (/sys/module)", f"{SYS_MODULE}: {exc.strerror}")
        return
    modules = [m for m in (_sysfs_module(r, n) for n in names) if m is not None]
    r.records.extend(modules)
    r.full[SYSFS_VIEW] = {m.name for m in modules}


def _collect_kallsyms(r: _Reading) -> None:
    try:
        r.full[KALLSYMS_VIEW] = r.kernel.kallsyms.modules()
        return
    except KernelAccessError as exc:
        failure = str(exc)
    # Zeroed addresses still carry the [module] names.
    text = r.optional(KALLSYMS)
    if text is not None and "\t[" in text:
        r.full[KALLSYMS_VIEW] = kallsyms_module_names(text)
    elif text is None or not text.strip():
        r.gap("module symbols (/proc/kallsyms)", failure)
    else:
        r.full[KALLSYMS_VIEW] = set()


def _collect_kallsyms_again(r: _Reading) -> None:
    """The kallsyms view read afresh from /proc/kallsyms, not from the symbol table the scan
    shares (read when the scan started)."""
    text = r.optional(KALLSYMS)
    if text is not None and "\t[" in text:
        r.full[KALLSYMS_VIEW] = kallsyms_module_names(text)
    elif text is not None and text.strip():
        r.full[KALLSYMS_VIEW] = set()


def read_views_again(kernel: Kernel) -> tuple[dict[str, set[str]], set[str]]:
    """Every full view read a second time, and the modules then loading or unloading, for a
    mismatch to be reported only if it holds."""
    r = _Reading("modules", kernel)
    _collect_sysfs(r)
    _collect_proc(r)
    _collect_kallsyms_again(r)
    return r.full, _transient(r.records)


def _section_addresses(r: _Reading, name: str, live: bool) -> list[int]:
    """/sys/module/<name>/sections/*: one "0x..." start address per ELF section; for a live
    module, none of the sections in its freed init memory (INIT_SECTIONS)."""
    base = f"{SYS_MODULE}/{name}/sections"
    try:
        sections = sorted(p.name for p in r.kernel.path(base).iterdir())
    except OSError:
        return []
    if live:
        sections = [s for s in sections if not s.startswith(INIT_SECTIONS)]
    values = ((r.optional(f"{base}/{s}") or "").strip() for s in sections)
    return [int(v, 16) for v in values if v.startswith("0x")]


def _symbol_addresses(r: _Reading, names: set[str]) -> list[int]:
    """Addresses of visible modules that cost no extra read: /proc/modules bases, kallsyms."""
    found = [m.address for m in records_of(r.records, ProcModule) if m.address]
    with contextlib.suppress(KernelAccessError):  # its gap is recorded by the kallsyms view
        found += [s.address for s in r.kernel.kallsyms.in_modules(names)]
    return [a for a in found if a]


def _all_section_addresses(r: _Reading, names: set[str]) -> list[int]:
    moving = _transient(r.records)
    return [a for n in sorted(names) for a in _section_addresses(r, n, n not in moving) if a]


def _memory_starts(r: _Reading) -> list[int] | None:
    """Where each memory area of every module on the kernel's list starts, as its struct
    module records it (mem[] from 6.4, core_layout before; freed init memory left out): the
    areas' own starts, which sysfs's section files only approximate, at a few reads a module
    instead of a file a section (~40 a module: 3.8 -> 44.5 ms on a 16-module 6.12 capture).
    None where the memory reader or BTF cannot say; the section files are read then."""
    kernel = r.kernel
    if not kernel.live:
        return None
    try:
        memory, btf = kernel.memory(), kernel.vmlinux_btf
        at, ranges = layout(btf), memory_layout(btf)
        modules = walk_modules(memory, modules_head(kernel, memory, at)[0], at)
        return [start for m in modules for start, _ in memory_ranges(memory, ranges, m)]
    except (KernelAccessError, OSError):
        return None


def _area_starts(r: _Reading, names: set[str]) -> list[int]:
    """The listed modules' area starts: from kernel memory, else from the section files."""
    starts = _memory_starts(r)
    return _all_section_addresses(r, names) if starts is None else starts


# Only the lines that can matter here: a caller inside a module ("[mod]") or the loader's own.
# Most of vmallocinfo is neither, and parsing it whole costs more than the rest of the surface.
_LOADER_CALLS = tuple(f" {caller}+0x" for caller in sorted(LOADER_CALLERS))


def _module_area_lines(text: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if "]" in line or any(c in line for c in _LOADER_CALLS)
    )


def _loader_of(text: str) -> list[VmallocArea]:
    return distinct(loader_areas(parse_vmallocinfo(_module_area_lines(text))))


SETTLE_PAUSE = 0.05  # seconds between reads that must agree, and before a second look


@dataclass(frozen=True)
class LoaderLook:
    """The loader's areas as vmallocinfo read settles them."""

    areas: tuple[VmallocArea, ...]
    reads: int  # reads of /proc/vmallocinfo taken
    settled: bool  # the last two agreed; else the areas are the union of the last two


def settled_loader_areas(r: _Reading, first: list[VmallocArea]) -> LoaderLook:
    """The loader's areas once two reads in a row agree on them (the 2nd read at once, a 3rd
    50 ms later if need be); the union of the last two if none agree.
    One read can skip lines: before 6.9 vmallocinfo finds its place again by line number
    every 4 KiB, so an area freed meanwhile below that place hides the line after it (in the
    lab on 6.1, 8 of 600 reads under fork churn missed a module's area)."""
    looks = [first]
    for pause in (0.0, SETTLE_PAUSE):
        time.sleep(pause)
        text = r.optional(VMALLOCINFO)
        if text is None:  # unreadable since the first read: nothing to settle against
            return LoaderLook(tuple(looks[-1]), len(looks), False)
        looks.append(_loader_of(text))
        if looks[-1] == looks[-2]:
            return LoaderLook(tuple(looks[-1]), len(looks), True)
    return LoaderLook(tuple(distinct(looks[-2] + looks[-1])), len(looks), False)


def _placed(
    r: _Reading, loader: list[VmallocArea], names: set[str], starts: list[int] | None
) -> tuple[list[VmallocArea], list[int] | None]:
    """Hashed areas placed by the modules' bases (vmallocinfo.placed), and by their areas'
    starts too if the bases leave a run unplaced (from 6.4 a run may hold only modules' data
    areas, which no base starts): `starts` as memory gave them, else the section files'; the
    starts, if there were any."""
    bases = [m.address for m in records_of(r.records, ProcModule) if m.address]
    where = placed(loader, bases)
    if len(where) == len(loader):
        return where, starts
    starts = _all_section_addresses(r, names) if starts is None else starts
    return placed(loader, bases, starts), starts


def _unaccounted(
    r: _Reading, loader: list[VmallocArea], names: set[str], starts: list[int] | None
) -> tuple[list[VmallocArea], int]:
    """Loader areas no visible module's address lies in, and how many hashed areas could not
    be placed to be judged. `starts`: the listed modules' area starts if read already; else
    read only if needed."""
    unplaced = 0
    if not all(a.real_addresses for a in loader):
        where, starts = _placed(r, loader, names, starts)
        loader, unplaced = where, len(loader) - len(where)
    lonely = unaccounted_areas(loader, _symbol_addresses(r, names))
    if lonely:
        if starts is None:  # not read for placing (an empty list was read: no re-read)
            starts = _area_starts(r, names)
        lonely = unaccounted_areas(lonely, starts)
    return lonely, unplaced


def _memory(r: _Reading, look: LoaderLook, names: set[str]) -> ModuleMemory:
    loader = list(look.areas)
    real = all(a.real_addresses for a in loader)
    # Hashed addresses: the areas struct module records are both where they start and how
    # many there are, so a run of areas too short to place is still counted.
    starts = None if real else _memory_starts(r)
    lonely, unplaced = _unaccounted(r, loader, names, starts)
    return ModuleMemory(
        allocations=len(loader),
        # the modules the lists show: one seen only as a vmalloc caller is itself hidden
        modules=len(set().union(*r.full.values())),
        per_module_max=areas_per_module(r.optional(OSRELEASE)),
        loading=len(_transient(r.records)),
        unaccounted=tuple(f"{a.start:#x}-{a.end:#x}" for a in lonely),
        addresses_real=real,
        unplaced=unplaced,
        reads=look.reads,
        settled=look.settled,
        module_areas=None if starts is None else len(starts),
    )


def held(first: ModuleMemory, again: ModuleMemory) -> ModuleMemory:
    """The second look's memory, with only the unaccounted areas both looks saw."""
    kept = tuple(u for u in again.unaccounted if u in first.unaccounted)
    return replace(again, unaccounted=kept, reads=first.reads + again.reads, second_look=True)


def _collect_vmalloc(r: _Reading, text: str) -> None:
    areas = parse_vmallocinfo(_module_area_lines(text))
    r.partial[VMALLOC_CALLER_VIEW] = {
        a.caller_module for a in areas if a.caller_module and a.caller_module not in PSEUDO_MODULES
    }
    look = settled_loader_areas(r, distinct(loader_areas(areas)))
    if not look.areas:
        return
    names = set().union(*r.full.values(), *r.partial.values())
    memory = _memory(r, look, names)
    # A module just loaded on 6.1 keeps its init area until an RCU grace period has passed
    # (19 areas for 18 modules right after insmod in the lab, 18 at 50 ms): look again.
    if memory.unaccounted or memory.excess > 0:
        time.sleep(SETTLE_PAUSE)
        text_again = r.optional(VMALLOCINFO)
        if text_again is not None:
            look = settled_loader_areas(r, _loader_of(text_again))
            memory = held(memory, _memory(r, look, names))
    r.records.extend(look.areas)
    r.records.append(memory)


def _transient(records: Sequence[object]) -> set[str]:
    states = [(m.name, m.state) for m in records_of(records, ProcModule)]
    states += [(m.name, m.initstate) for m in records_of(records, SysfsModule)]
    return {name for name, state in states if state in TRANSIENT_STATES}
