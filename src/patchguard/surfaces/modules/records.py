"""The modules surface's records: sysfs entries, loader allocations, the views compared."""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.kernel.proc_modules import ProcModule
from patchguard.kernel.vmallocinfo import VmallocArea as VmallocArea
from patchguard.surfaces.base import RecordSet

LISTED, BY_NAME_ONLY, GONE = "listed", "opens by name only", "gone"  # a module's /sys/module

# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SysfsModule:
    """A loaded module's /sys/module/<name> (built-ins have no initstate and are skipped)."""

    name: str
    initstate: str  # live, coming, going
    taints: str = ""
    coresize: int | None = None


@dataclass(frozen=True)
class ModuleViews:
    """Which views see one module; a module missing from a full view is hidden from it."""

    name: str
    seen_by: tuple[str, ...]
    hidden_from: tuple[str, ...]
    transient: bool = False  # loading or unloading: views may disagree for a moment
    second_look: bool = False  # hidden_from held when every view was read again


@dataclass(frozen=True)
class ModuleMemory:
    """The module loader's allocations in vmallocinfo, against the modules the views list."""

    allocations: int
    modules: int  # modules the name views list
    per_module_max: int  # most allocations one module holds on this kernel
    loading: int = 0  # modules still initialising, whose init area is not freed yet
    unaccounted: tuple[str, ...] = ()  # "start-end" of areas no visible module lies in
    addresses_real: bool = False  # False: %pK hashed them; unaccounted from placed areas only
    unplaced: int = 0  # hashed areas no known address could place: not judged one by one
    reads: int = 1  # reads of vmallocinfo taken: one read can skip a line (collect.py)
    settled: bool = True  # two reads in a row agreed; else the union of the last two
    second_look: bool = False  # what looked hidden was read again 50 ms later: this is that
    module_areas: int | None = None  # areas the listed modules' struct module records, if read

    @property
    def excess(self) -> int:
        """Loader areas beyond what the listed modules hold: exactly where their struct module
        says how many each has, else counting per_module_max for each."""
        if self.module_areas is None:
            return self.allocations - self.modules * self.per_module_max - self.loading
        return self.allocations - self.module_areas - self.loading


@dataclass(frozen=True)
class ModuleListMissing:
    """/proc/modules is gone although the kernel has a module loader."""

    loader_symbols: tuple[str, ...]


@dataclass(frozen=True)
class ModuleMemoryViews:
    """One module of memory's module list, and what the text views show of it."""

    name: str
    symbols: int  # named entries of its own symbol table in memory
    shown: int  # of those, how many /proc/kallsyms as read here prints
    hidden_symbols: tuple[str, ...]  # the first SHOWN of those it does not print
    sysfs: str  # LISTED, BY_NAME_ONLY or GONE
    in_kset: bool  # its kobject is on module_kset's list in memory
    second_look: bool = False  # a view that left it out did so again when read once more


@dataclass(frozen=True)
class ModulesRecords(RecordSet):
    """The modules surface's records by kind."""

    proc_modules: tuple[ProcModule, ...] = ()
    sysfs_modules: tuple[SysfsModule, ...] = ()
    loader_areas: tuple[VmallocArea, ...] = ()
    memory: ModuleMemory | None = None
    list_missing: ModuleListMissing | None = None
    views: tuple[ModuleViews, ...] = ()
    memory_views: tuple[ModuleMemoryViews, ...] = ()
