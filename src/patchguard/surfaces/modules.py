"""Loadable modules, seen four ways: the module list (/proc/modules), sysfs (/sys/module/<name>
with `initstate`), module symbols in /proc/kallsyms, and the module loader's allocations in
/proc/vmallocinfo.

PatchGuard's "module list corruption", in Linux terms. A rootkit hides its module by taking it
off the list (list_del: gone from /proc/modules and kallsyms) and out of sysfs (kobject_del),
but its code still lives in memory the module loader allocated. A module one view sees and
another does not is a finding; so is loader memory that no visible module accounts for.

Formats follow the kernel's printers: m_show()/print_unload_info()/module_flags() in
kernel/module/ (procfs.c, main.c), show_initstate()/show_taint() in kernel/module/sysfs.c and
main.c, and vmalloc_info_show() (s_show() before 6.9) in mm/vmalloc.c.
"""

from __future__ import annotations

import bisect
import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.kernel.errors import KernelAccessError, is_enoent
from patchguard.kernel.kallsyms import PSEUDO_MODULES
from patchguard.kernel.memory import KERNEL_SPACE  # %pK prints hashed or zeroed values below it
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.reading import Reading, records_of

if TYPE_CHECKING:
    from patchguard.kernel import Kernel
from patchguard.kernel.proc_modules import PROC_MODULES, ProcModule, parse_proc_modules

SURFACE = "modules"
ROOTKIT = "T1014"
MODULE_LOAD = "T1547.006"

SYS_MODULE = "/sys/module"
KALLSYMS = "/proc/kallsyms"
VMALLOCINFO = "/proc/vmallocinfo"
OSRELEASE = "/proc/sys/kernel/osrelease"
NO_MODULE_SUPPORT = "this kernel has no loadable module support (/proc/modules absent)"

# The views that list every loaded module, and the partial one that names only modules that
# called vmalloc (its caller column prints "func+off/size [module]").
PROC_VIEW = "proc_modules"
SYSFS_VIEW = "sysfs"
KALLSYMS_VIEW = "kallsyms"
VMALLOC_CALLER_VIEW = "vmalloc_callers"

# Symbols only a kernel with a module loader has (kernel/module/ is built only with
# CONFIG_MODULES; the init_module syscalls exist either way, as weak -ENOSYS stubs).
LOADER_SYMBOLS = ("load_module", "do_init_module")

# vmallocinfo names the caller of each allocation, not the module. The loader's memory is
# allocated from these functions, depending on the kernel: module_alloc() called from
# move_module() (inlined into layout_and_allocate()/load_module()) before 6.4;
# module_memory_alloc() from 6.4, through execmem_alloc() from 6.10.
LOADER_CALLERS = frozenset(
    {"load_module", "layout_and_allocate", "move_module", "module_alloc", "module_memory_alloc"}
)
# Allocations one live module holds: its core before 6.4 (the init area is freed once it is
# live: found in the lab, where 2 let a hidden module's area pass); one per mod_mem_type from
# 6.4 (text, data, rodata, ro_after_init, and the three init ones while it initialises).
# A module still loading holds one more before 6.4 (its init area).
AREAS_PER_MODULE_OLD = 1
AREAS_PER_MODULE = 7

# Module taint letters (taint_flags[] entries with .module set, kernel/panic.c).
MODULE_TAINTS: dict[str, tuple[str, Severity, str]] = {
    "P": ("proprietary-module", Severity.LOW, "proprietary (non-GPL) licence"),
    "O": ("out-of-tree-module", Severity.MEDIUM, "built outside the kernel tree"),
    "E": ("unsigned-module", Severity.MEDIUM, "loaded without a valid signature"),
    "F": ("forced-module-load", Severity.HIGH, "force-loaded past version checks"),
    "C": ("staging-module", Severity.INFO, "a staging (unfinished) driver"),
    "K": ("livepatch-module", Severity.INFO, "a live patch of the kernel"),
    "X": ("auxiliary-taint-module", Severity.INFO, "marked by the distribution (auxiliary)"),
    "T": ("randstruct-module", Severity.INFO, "built with the struct randomization plugin"),
    "N": ("test-module", Severity.INFO, "an in-kernel test"),
}
TRANSIENT_STATES = frozenset({"Loading", "Unloading", "coming", "going"})

T = TypeVar("T")


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SysfsModule:
    """A loaded module's /sys/module/<name> (built-ins have no initstate and are skipped)."""

    name: str
    initstate: str  # live, coming, going
    taints: str = ""
    coresize: int | None = None


@dataclass(frozen=True)
class VmallocArea:
    """One line of /proc/vmallocinfo."""

    start: int
    end: int
    size: int
    caller: str | None  # function name of the caller; None for unpurged and vm_map_ram areas
    caller_module: str | None = None  # "[mod]" after the caller: the module that allocated
    kinds: tuple[str, ...] = ()  # vmalloc, vmap, ioremap, user, ...; "unpurged", "vm_map_ram"
    pages: int | None = None

    @property
    def real_addresses(self) -> bool:
        return self.start >= KERNEL_SPACE


@dataclass(frozen=True)
class ModuleViews:
    """Which views see one module; a module missing from a full view is hidden from it."""

    name: str
    seen_by: tuple[str, ...]
    hidden_from: tuple[str, ...]
    transient: bool = False  # loading or unloading: views may disagree for a moment


@dataclass(frozen=True)
class ModuleMemory:
    """The module loader's allocations in vmallocinfo, against the modules the views list."""

    allocations: int
    modules: int  # modules the name views list
    per_module_max: int  # most allocations one module holds on this kernel
    loading: int = 0  # modules still initialising, whose init area is not freed yet
    unaccounted: tuple[str, ...] = ()  # "start-end" of areas no visible module lies in
    addresses_real: bool = False  # False: %pK hashed them, only counts can be compared

    @property
    def excess(self) -> int:
        return self.allocations - self.modules * self.per_module_max - self.loading


@dataclass(frozen=True)
class ModuleListMissing:
    """/proc/modules is gone although the kernel has a module loader."""

    loader_symbols: tuple[str, ...]


# --- parsers: pure functions over text ----------------------------------------------------------


def parse_taint_letters(text: str) -> str:
    """/sys/module/<name>/taint ("OE\\n") or a "(OE+)" column: the taint letters only."""
    return "".join(ch for ch in text if ch.isalpha())


_VMALLOC_LINE = re.compile(r"^0x(?P<start>[0-9a-fA-F]+)-0x(?P<end>[0-9a-fA-F]+)\s+(?P<size>\d+)")
_CALLER = re.compile(r"^(?P<name>[^\s+]+)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+$")
_PAGES = re.compile(r"^pages=(\d+)$")


def _vmalloc_area(line: str) -> VmallocArea | None:
    found = _VMALLOC_LINE.match(line)
    if found is None:
        return None
    words = line[found.end() :].split()
    caller = module = None
    if words and (called := _CALLER.match(words[0])):
        caller = called["name"]
        words = words[1:]
        if words and words[0].startswith("[") and words[0].endswith("]"):
            module, words = words[0][1:-1], words[1:]
    pages = next((int(p[1]) for w in words if (p := _PAGES.match(w))), None)
    if words[:2] == ["unpurged", "vm_area"]:
        words = ["unpurged"]
    kinds = tuple(w for w in words if "=" not in w)
    start, end = int(found["start"], 16), int(found["end"], 16)
    return VmallocArea(start, end, int(found["size"]), caller, module, kinds, pages)


def parse_vmallocinfo(text: str) -> list[VmallocArea]:
    """/proc/vmallocinfo: `0x<start>-0x<end> <size> [<caller %pS>] [pages=N] [phys=A] [kinds]
    [N0=n]`, plus `... unpurged vm_area` and `... vm_map_ram` lines without a caller."""
    return [a for a in map(_vmalloc_area, text.splitlines()) if a is not None]


def loader_areas(areas: Iterable[VmallocArea]) -> list[VmallocArea]:
    """The areas the module loader allocated (see LOADER_CALLERS)."""
    return [a for a in areas if a.caller in LOADER_CALLERS]


def kallsyms_module_names(text: str) -> set[str]:
    """Module names of /proc/kallsyms lines, read even where kptr_restrict zeroes addresses."""
    names = set(re.findall(r"\t\[([^\]\s]+)\]\s*$", text, re.M))
    return names - PSEUDO_MODULES


def areas_per_module(release: str | None) -> int:
    """Most loader allocations one module holds, by kernel release ("6.1.0-18-amd64")."""
    found = re.match(r"(\d+)\.(\d+)", release or "")
    if found and (int(found[1]), int(found[2])) < (6, 4):
        return AREAS_PER_MODULE_OLD
    return AREAS_PER_MODULE


def cross_view(
    full: Mapping[str, set[str]],
    partial: Mapping[str, set[str]] | None = None,
    transient: Iterable[str] = (),
) -> list[ModuleViews]:
    """Every module any view names, with the views that see it and the full views that do not.

    A partial view only ever adds sightings: a module missing from it is not hidden from it.
    """
    views = {**full, **(partial or {})}
    moving = set(transient)
    names = sorted(set().union(*views.values())) if views else []
    return [
        ModuleViews(
            name,
            tuple(v for v, seen in views.items() if name in seen),
            tuple(v for v, seen in full.items() if name not in seen),
            name in moving,
        )
        for name in names
    ]


def unaccounted_areas(areas: Sequence[VmallocArea], addresses: Iterable[int]) -> list[VmallocArea]:
    """Loader areas that hold no address of any visible module (symbol, section or base)."""
    known = sorted(addresses)
    lonely = []
    for area in areas:
        i = bisect.bisect_left(known, area.start)
        if i == len(known) or known[i] >= area.end:
            lonely.append(area)
    return lonely


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


def _section_addresses(r: _Reading, name: str) -> list[int]:
    """/sys/module/<name>/sections/*: one "0x..." start address per ELF section."""
    base = f"{SYS_MODULE}/{name}/sections"
    try:
        sections = sorted(p.name for p in r.kernel.path(base).iterdir())
    except OSError:
        return []
    values = ((r.optional(f"{base}/{s}") or "").strip() for s in sections)
    return [int(v, 16) for v in values if v.startswith("0x")]


def _known_addresses(r: _Reading, names: set[str]) -> list[int]:
    """Every address of a visible module: /proc/modules bases, sysfs sections, kallsyms."""
    found = [m.address for m in records_of(r.records, ProcModule) if m.address]
    for name in sorted(names):
        found += _section_addresses(r, name)
    with contextlib.suppress(KernelAccessError):  # its gap is recorded by the kallsyms view
        found += [s.address for s in r.kernel.kallsyms.in_modules(names)]
    return [a for a in found if a]


# Only the lines that can matter here: a caller inside a module ("[mod]") or the loader's own.
# Most of vmallocinfo is neither, and parsing it whole costs more than the rest of the surface.
_LOADER_CALLS = tuple(f" {caller}+0x" for caller in sorted(LOADER_CALLERS))


def _module_area_lines(text: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if "]" in line or any(c in line for c in _LOADER_CALLS)
    )


def _collect_vmalloc(r: _Reading, text: str) -> None:
    areas = parse_vmallocinfo(_module_area_lines(text))
    r.partial[VMALLOC_CALLER_VIEW] = {
        a.caller_module for a in areas if a.caller_module and a.caller_module not in PSEUDO_MODULES
    }
    loader = loader_areas(areas)
    if not loader:
        return
    names = set().union(*r.full.values(), *r.partial.values())
    real = all(a.real_addresses for a in loader)
    lonely = unaccounted_areas(loader, _known_addresses(r, names)) if real else []
    r.records.extend(loader)
    r.records.append(
        ModuleMemory(
            allocations=len(loader),
            # the modules the lists show: one seen only as a vmalloc caller is itself hidden
            modules=len(set().union(*r.full.values())),
            per_module_max=areas_per_module(r.optional(OSRELEASE)),
            loading=len(_transient(r.records)),
            unaccounted=tuple(f"{a.start:#x}-{a.end:#x}" for a in lonely),
            addresses_real=real,
        )
    )


def _transient(records: Sequence[object]) -> set[str]:
    states = [(m.name, m.state) for m in records_of(records, ProcModule)]
    states += [(m.name, m.initstate) for m in records_of(records, SysfsModule)]
    return {name for name, state in states if state in TRANSIENT_STATES}


class ModulesSurface:
    name = SURFACE
    title = "Loadable modules (cross-view)"

    def collect(self, kernel: Kernel) -> SurfaceState:
        r = _Reading(SURFACE, kernel)
        vmallocinfo = r.text("module memory (/proc/vmallocinfo)", VMALLOCINFO)
        _collect_sysfs(r)
        # kallsyms last: surfaces run beside its reading, and these views need it
        _collect_proc(r)
        _collect_kallsyms(r)
        if vmallocinfo is not None:
            _collect_vmalloc(r, vmallocinfo)
        views = cross_view(r.full, r.partial, _transient(r.records))
        r.records.extend(views)
        counts = {
            "modules": len(views),
            "hidden": sum(bool(v.hidden_from) for v in views),
            **{view: len(names) for view, names in r.full.items()},
            "loader_allocations": len(records_of(r.records, VmallocArea)),
        }
        return SurfaceState(SURFACE, tuple(r.records), counts, tuple(r.gaps))

    def assess(self, state: SurfaceState) -> list[Finding]:
        return assess_records(state.records)


# --- assess -------------------------------------------------------------------------------------


def _finding(
    technique: str,
    severity: Severity,
    subject: str,
    summary: str,
    evidence: Evidence,
    attack_id: str | None = ROOTKIT,
    disposition: Disposition = Disposition.SUSPICIOUS,
) -> Finding:
    return Finding(
        surface=SURFACE,
        technique=technique,
        severity=severity,
        subject=subject,
        summary=summary,
        disposition=disposition,
        attack_id=attack_id,
        evidence=evidence,
    )


def _assess_views(views: ModuleViews) -> list[Finding]:
    if not views.hidden_from:
        return []
    seen, hidden = ", ".join(views.seen_by), ", ".join(views.hidden_from)
    evidence: Evidence = {
        "module": views.name,
        "seen_by": list(views.seen_by),
        "hidden_from": list(views.hidden_from),
    }
    if views.transient:  # load_module() fills the views one after another
        return [
            _finding(
                "hidden-module",
                Severity.LOW,
                f"module {views.name}",
                f"Module {views.name} is loading or unloading: {seen} see it, {hidden} do not "
                "yet; a scan a moment later settles it.",
                evidence,
            )
        ]
    return [
        _finding(
            "hidden-module",
            Severity.HIGH,
            f"module {views.name}",
            f"Module {views.name} is seen by {seen} but hidden from {hidden}: modules are "
            "taken off these lists only to hide them.",
            evidence,
            disposition=Disposition.TAMPERING,
        )
    ]


def _assess_memory(memory: ModuleMemory) -> list[Finding]:
    evidence: Evidence = {
        "loader_allocations": memory.allocations,
        "visible_modules": memory.modules,
        "per_module_max": memory.per_module_max,
        "unaccounted": list(memory.unaccounted),
        "addresses_real": memory.addresses_real,
    }
    found = []
    if memory.unaccounted:
        found.append(
            _finding(
                "hidden-module",
                Severity.HIGH,
                "module memory",
                f"Module-loader allocations in vmallocinfo ({len(memory.unaccounted)}) hold no "
                "address of any visible module: memory of a module no view lists.",
                evidence,
                disposition=Disposition.TAMPERING,
            )
        )
    elif memory.excess > 0:
        found.append(
            _finding(
                "hidden-module",
                Severity.HIGH,
                "module memory",
                f"vmallocinfo shows {memory.allocations} module-loader allocations, more than "
                f"the {memory.modules} visible modules can hold ({memory.per_module_max} each): "
                "memory of a module no view lists.",
                evidence,
                disposition=Disposition.TAMPERING,
            )
        )
    return found


def _assess_taints(name: str, letters: str) -> list[Finding]:
    found = []
    for letter in sorted(set(letters)):
        technique, severity, meaning = MODULE_TAINTS.get(
            letter, ("tainted-module", Severity.LOW, f"taint {letter}")
        )
        found.append(
            _finding(
                technique,
                severity,
                f"module {name}",
                f"Module {name} tainted the kernel ({letter}): {meaning}.",
                {"module": name, "taint": letter},
                attack_id=MODULE_LOAD if severity >= Severity.MEDIUM else None,
            )
        )
    return found


def _taints_by_module(records: Sequence[object]) -> dict[str, str]:
    taints: dict[str, str] = {}
    for name, letters in [(m.name, m.taints) for m in records_of(records, ProcModule)] + [
        (m.name, m.taints) for m in records_of(records, SysfsModule)
    ]:
        taints[name] = "".join(sorted(set(taints.get(name, "") + letters)))
    return taints


def _assess_state(module: ProcModule) -> list[Finding]:
    if module.state not in TRANSIENT_STATES:
        return []
    return [
        _finding(
            "module-in-transition",
            Severity.INFO,
            f"module {module.name}",
            f"Module {module.name} is {module.state.lower()}.",
            {"module": module.name, "state": module.state},
            attack_id=None,
        )
    ]


def _assess_missing_list(missing: ModuleListMissing) -> Finding:
    return _finding(
        "module-list-removed",
        Severity.HIGH,
        PROC_MODULES,
        "/proc/modules is gone although the kernel has a module loader: removing it hides "
        "every module from lsmod.",
        {"loader_symbols": list(missing.loader_symbols)},
        disposition=Disposition.TAMPERING,
    )


def assess_records(records: Sequence[object]) -> list[Finding]:
    found = [f for v in records_of(records, ModuleViews) for f in _assess_views(v)]
    found += [f for m in records_of(records, ModuleMemory) for f in _assess_memory(m)]
    found += [f for m in records_of(records, ProcModule) for f in _assess_state(m)]
    found += [
        f for n, t in sorted(_taints_by_module(records).items()) for f in _assess_taints(n, t)
    ]
    found += [_assess_missing_list(m) for m in records_of(records, ModuleListMissing)]
    return found


__all__ = [
    "NO_MODULE_SUPPORT",
    "ModuleListMissing",
    "ModuleMemory",
    "ModuleViews",
    "ModulesSurface",
    "ProcModule",
    "SysfsModule",
    "VmallocArea",
    "areas_per_module",
    "assess_records",
    "cross_view",
    "kallsyms_module_names",
    "loader_areas",
    "parse_proc_modules",
    "parse_taint_letters",
    "parse_vmallocinfo",
    "unaccounted_areas",
]
