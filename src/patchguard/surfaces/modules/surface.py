"""The modules surface: collect the four views, assess without a baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchguard.findings import Finding
from patchguard.surfaces.base import SurfaceState

if TYPE_CHECKING:
    from patchguard.kernel import Kernel
from patchguard.surfaces.modules.assess import assess_records
from patchguard.surfaces.modules.collect import (
    _collect_kallsyms,
    _collect_proc,
    _collect_sysfs,
    _collect_vmalloc,
    _Reading,
    _transient,
    read_views_again,
)
from patchguard.surfaces.modules.memory_views import collect_memory_views, memory_view_findings
from patchguard.surfaces.modules.parse import cross_view, second_look
from patchguard.surfaces.modules.paths import NAME, VMALLOCINFO
from patchguard.surfaces.modules.records import ModulesRecords


class ModulesSurface:
    name = NAME
    title = "Loadable modules (cross-view)"

    def collect(self, kernel: Kernel) -> SurfaceState[ModulesRecords]:
        r = _Reading(NAME, kernel)
        vmallocinfo = r.text("module memory (/proc/vmallocinfo)", VMALLOCINFO)
        _collect_sysfs(r)
        # kallsyms last: surfaces run beside its reading, and these views need it
        _collect_proc(r)
        _collect_kallsyms(r)
        if vmallocinfo is not None:
            _collect_vmalloc(r, vmallocinfo)
        views = cross_view(r.full, r.partial, _transient(r.records))
        if any(v.hidden_from and not v.transient for v in views):
            full, moving = read_views_again(kernel)
            again = cross_view({**r.full, **full}, r.partial, moving)
            views = second_look(views, again)
        r.records.extend(views)
        collect_memory_views(r)
        records = ModulesRecords.of(r.records)
        counts = {
            "modules": len(views),
            "hidden": sum(bool(v.hidden_from) for v in views),
            **{view: len(names) for view, names in r.full.items()},
            "loader_allocations": len(records.loader_areas),
        }
        return SurfaceState(NAME, records, counts, tuple(r.gaps))

    def assess(self, state: SurfaceState[ModulesRecords]) -> list[Finding]:
        return assess_records(state.records) + memory_view_findings(state.records)
