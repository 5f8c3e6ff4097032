"""The modules surface's records: sysfs entries, loader allocations, the views compared."""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.kernel.vmallocinfo import VmallocArea as VmallocArea

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
    addresses_real: bool = False  # False: %pK hashed them, only counts can be compared

    @property
    def excess(self) -> int:
        return self.allocations - self.modules * self.per_module_max - self.loading


@dataclass(frozen=True)
class ModuleListMissing:
    """/proc/modules is gone although the kernel has a module loader."""

    loader_symbols: tuple[str, ...]
