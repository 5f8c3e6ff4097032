"""Parsers, pure functions over the text of /sys/module, /proc/kallsyms and /proc/vmallocinfo,
and the cross-view of module names."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from patchguard.kernel.kallsyms import PSEUDO_MODULES
from patchguard.kernel.vmallocinfo import VmallocArea
from patchguard.kernel.vmallocinfo import parse_vmallocinfo as parse_vmallocinfo
from patchguard.surfaces.modules.paths import AREAS_PER_MODULE, AREAS_PER_MODULE_OLD, LOADER_CALLERS
from patchguard.surfaces.modules.records import ModuleViews

# --- parsers: pure functions over text ----------------------------------------------------------


def parse_taint_letters(text: str) -> str:
    """/sys/module/<name>/taint ("OE\\n") or a "(OE+)" column: the taint letters only."""
    return "".join(ch for ch in text if ch.isalpha())


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


def second_look(first: Sequence[ModuleViews], second: Sequence[ModuleViews]) -> list[ModuleViews]:
    """The views of a second reading, hidden only from the views that hid the module in both
    readings: a module loading or unloading between two reads (or loaded by patchguard itself
    after a view was read) settles; one kept off a list stays hidden, said as seen twice."""
    before = {v.name: set(v.hidden_from) for v in first}
    settled = []
    for view in second:
        held = tuple(h for h in view.hidden_from if h in before.get(view.name, set()))
        settled.append(replace(view, hidden_from=held, second_look=bool(held)))
    return settled


def unaccounted_areas(areas: Sequence[VmallocArea], addresses: Iterable[int]) -> list[VmallocArea]:
    """Loader areas that hold no address of any visible module (symbol, section or base)."""
    known = sorted(addresses)
    lonely = []
    for area in areas:
        i = bisect.bisect_left(known, area.start)
        if i == len(known) or known[i] >= area.end:
            lonely.append(area)
    return lonely
