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

from patchguard.surfaces.modules.assess import assess_records
from patchguard.surfaces.modules.parse import (
    areas_per_module,
    cross_view,
    kallsyms_module_names,
    loader_areas,
    parse_taint_letters,
    parse_vmallocinfo,
    second_look,
    unaccounted_areas,
)
from patchguard.surfaces.modules.paths import NAME, NO_MODULE_SUPPORT
from patchguard.surfaces.modules.records import (
    ModuleListMissing,
    ModuleMemory,
    ModuleViews,
    SysfsModule,
    VmallocArea,
)
from patchguard.surfaces.modules.rules import MODULE_TAINTS
from patchguard.surfaces.modules.surface import ModulesSurface

__all__ = [
    "MODULE_TAINTS",
    "NAME",
    "NO_MODULE_SUPPORT",
    "ModuleListMissing",
    "ModuleMemory",
    "ModuleViews",
    "ModulesSurface",
    "SysfsModule",
    "VmallocArea",
    "areas_per_module",
    "assess_records",
    "cross_view",
    "kallsyms_module_names",
    "loader_areas",
    "parse_taint_letters",
    "parse_vmallocinfo",
    "second_look",
    "unaccounted_areas",
]
