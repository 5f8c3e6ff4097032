"""Each module as kernel memory holds it (kernel/module_symbols.py) against two text views:
/proc/kallsyms (the module's symbols, which the kernel prints from the module's own symbol
table) and the /sys/module directory.

A module whose own table holds symbols /proc/kallsyms, as this process reads it, does not
print is a filtered view. A module /sys/module does not list is told apart two ways: its
directory still opens by name and its kobject is on module_kset's list (a getdents filter hides
the entry: a filtered view), or there is no directory and the kobject is off the list
(kobject_del removed it: a hidden module). Either is looked at once more before it is said: a
module loading is on the list before its kobject is added, one unloading loses its kobject
before it leaves the list.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from patchguard.findings import Disposition, Finding
from patchguard.kernel.child_read import ChildRead
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.memory import KernelMemory
from patchguard.kernel.module_symbols import (
    ModuleInMemory,
    ModuleLayout,
    layout,
    modules_head,
    read_module,
    walk_modules,
)
from patchguard.surfaces.base import finding
from patchguard.surfaces.modules.paths import KALLSYMS, NAME, NO_MODULE_SUPPORT, SYS_MODULE
from patchguard.surfaces.modules.records import (
    BY_NAME_ONLY,
    GONE,
    LISTED,
    ModuleMemoryViews,
    ModulesRecords,
)
from patchguard.surfaces.reading import Reading
from patchguard.text import visible

SHOWN = 12
SETTLE_SECONDS = 0.05  # before a second look at /sys/module


def collect_memory_views(r: Reading) -> None:
    """Append a ModuleMemoryViews per module on memory's module list; a gap where it is unread.
    Nothing on a captured tree (no memory to hold its views against) or a kernel without
    modules (the surface already says so)."""
    kernel = r.kernel
    if not kernel.live or any(g.reason == NO_MODULE_SUPPORT for g in r.gaps):
        return
    try:
        memory, at = kernel.memory(), layout(kernel.vmlinux_btf)
        head, _ = modules_head(kernel, memory, at)
        modules = [read_module(memory, m, at) for m in walk_modules(memory, head, at)]
        shown = kernel.kallsyms
    except KernelAccessError as exc:
        r.gap("modules in kernel memory (the modules list, each one's symbol table)", str(exc))
        return
    listing = _listing(kernel.path(SYS_MODULE))
    views = [_views(m, shown, listing, kernel.path(SYS_MODULE)) for m in modules]
    if any(v.hidden_symbols for v in views):
        views = _second_look(views, modules, kernel.path(KALLSYMS))
    if any(v.sysfs != LISTED for v in views):
        views = _sysfs_second_look(views, memory, head, at, kernel.path(SYS_MODULE))
    r.records.extend(views)


def _listing(sys_module: Path) -> frozenset[str] | None:
    try:
        return frozenset(os.listdir(sys_module))
    except OSError:
        return None


def _views(
    m: ModuleInMemory,
    kallsyms: SymbolTable,
    listing: frozenset[str] | None,
    sys_module: Path,
) -> ModuleMemoryViews:
    printed = {s.name for s in kallsyms.in_modules({m.name})}
    kinds = dict(m.symbols)
    # functions first: they say more of a module than its parameters and string literals
    names = sorted(kinds, key=lambda n: (kinds[n] not in "tT", n))
    hidden = [n for n in names if n not in printed]
    return ModuleMemoryViews(
        m.name,
        len(names),
        len(names) - len(hidden),
        tuple(hidden[:SHOWN]),
        _sysfs(m.name, listing, sys_module),
        m.in_kset,
    )


def _sysfs(name: str, listing: frozenset[str] | None, sys_module: Path) -> str:
    if listing is None or name in listing:
        return LISTED
    return BY_NAME_ONLY if (sys_module / name).is_dir() else GONE


def _second_look(
    views: list[ModuleMemoryViews], modules: Sequence[ModuleInMemory], path: Path
) -> list[ModuleMemoryViews]:
    """/proc/kallsyms read again: a module loaded since the scan's read is not hidden."""
    try:
        fresh = SymbolTable(ChildRead(path).result().decode(errors="replace"))
    except OSError:
        return views
    by_name = {m.name: m for m in modules}
    out = []
    for v in views:
        if v.hidden_symbols:
            again = _views(by_name[v.name], fresh, None, path)
            held = bool(again.hidden_symbols)
            v = replace(v, shown=again.shown, hidden_symbols=again.hidden_symbols, second_look=held)
        out.append(v)
    return out


def _sysfs_second_look(
    views: list[ModuleMemoryViews],
    memory: KernelMemory,
    head: int,
    at: ModuleLayout,
    sys_module: Path,
) -> list[ModuleMemoryViews]:
    """The module list and /sys/module read again after a moment (a load or unload passes the
    gap between them in far less); on a failed re-read the first look stands."""
    time.sleep(SETTLE_SECONDS)
    try:
        now = [read_module(memory, m, at) for m in walk_modules(memory, head, at)]
    except KernelAccessError:
        return views
    return settled_sysfs(views, now, _listing(sys_module), sys_module)


def settled_sysfs(
    views: Sequence[ModuleMemoryViews],
    now: Sequence[ModuleInMemory],
    listing: frozenset[str] | None,
    sys_module: Path,
) -> list[ModuleMemoryViews]:
    """Each view whose module /sys/module left out, judged again: gone from memory's list (it
    was unloading) it is dropped; listed now (it was loading) it is listed; else what the
    second look saw, marked as held."""
    by_name = {m.name: m for m in now}
    out = []
    for v in views:
        again = by_name.get(v.name)
        if v.sysfs != LISTED and again is None:
            continue
        if v.sysfs != LISTED and again is not None:
            sysfs = _sysfs(v.name, listing, sys_module)
            v = replace(v, sysfs=sysfs, in_kset=again.in_kset, second_look=sysfs != LISTED)
        out.append(v)
    return out


def memory_view_findings(records: ModulesRecords) -> list[Finding]:
    out = []
    for v in records.memory_views:
        if v.hidden_symbols:
            out.append(_kallsyms_filtered(v))
        if v.sysfs == BY_NAME_ONLY:
            out.append(_sysfs_filtered(v))
        elif v.sysfs == GONE:
            out.append(_sysfs_removed(v))
    return out


def _kallsyms_filtered(v: ModuleMemoryViews) -> Finding:
    name, missing = visible(v.name), v.symbols - v.shown
    return finding(
        NAME,
        "filtered-view",
        "/proc/kallsyms",
        f"/proc/kallsyms, as this process reads it, hides {missing} of the {v.symbols} symbols "
        f"module {name}'s own symbol table in kernel memory holds "
        f"({', '.join(visible(s) for s in v.hidden_symbols)}){_again(v)}: something filters "
        "what this process reads",
        {
            "module": name,
            "symbols_in_memory": v.symbols,
            "symbols_shown": v.shown,
            "hidden_symbols": [visible(s) for s in v.hidden_symbols],
            "second_look": v.second_look,
        },
        disposition=Disposition.TAMPERING,
    )


def _sysfs_filtered(v: ModuleMemoryViews) -> Finding:
    name = visible(v.name)
    kset = "is on" if v.in_kset else "is off"
    return finding(
        NAME,
        "filtered-view",
        SYS_MODULE,
        f"{SYS_MODULE}, as this process lists it, leaves out {name}, whose directory still "
        f"opens by name and whose kobject {kset} module_kset's list in memory{_again(v)}: a "
        "filter on directory listings (getdents) hides it; its kobject was not removed",
        _sysfs_evidence(v, opens_by_name=True),
        disposition=Disposition.TAMPERING,
    )


def _sysfs_removed(v: ModuleMemoryViews) -> Finding:
    name = visible(v.name)
    return finding(
        NAME,
        "hidden-module",
        name,
        f"{name} is on the kernel's module list in memory but has no {SYS_MODULE} directory, "
        f"not even by name, and its kobject is {'still' if v.in_kset else 'no longer'} on "
        f"module_kset's list{_again(v)}: its kobject was removed from sysfs (kobject_del), not "
        "filtered from a listing",
        _sysfs_evidence(v, opens_by_name=False),
        disposition=Disposition.TAMPERING,
    )


def _again(v: ModuleMemoryViews) -> str:
    return ", on a second look too" if v.second_look else ""


def _sysfs_evidence(v: ModuleMemoryViews, opens_by_name: bool) -> dict[str, str | bool]:
    return {
        "module": visible(v.name),
        "opens_by_name": opens_by_name,
        "kobject_in_kset": v.in_kset,
        "second_look": v.second_look,
    }
