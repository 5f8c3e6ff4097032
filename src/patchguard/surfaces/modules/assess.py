"""Findings from the module records alone: hidden modules, unaccounted loader memory, taints,
modules in transition, a removed module list."""

from __future__ import annotations

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.kernel.proc_modules import PROC_MODULES, ProcModule
from patchguard.surfaces.base import finding
from patchguard.surfaces.modules.paths import MODULE_LOAD, NAME
from patchguard.surfaces.modules.records import (
    ModuleListMissing,
    ModuleMemory,
    ModulesRecords,
    ModuleViews,
)
from patchguard.surfaces.modules.rules import MODULE_TAINTS, TRANSIENT_STATES

TAMPERING = Disposition.TAMPERING

# --- assess -------------------------------------------------------------------------------------


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
            finding(
                NAME,
                "hidden-module",
                f"module {views.name}",
                f"Module {views.name} is loading or unloading: {seen} see it, {hidden} do not "
                "yet; a scan a moment later settles it.",
                evidence,
                severity=Severity.LOW,
            )
        ]
    return [
        finding(
            NAME,
            "hidden-module",
            f"module {views.name}",
            f"Module {views.name} is seen by {seen} but hidden from {hidden}"
            f"{', on a second look too' if views.second_look else ''}: modules are "
            "taken off these lists only to hide them.",
            {**evidence, "second_look": views.second_look},
            disposition=Disposition.TAMPERING,
        )
    ]


def _memory_evidence(memory: ModuleMemory) -> Evidence:
    return {
        "loader_allocations": memory.allocations,
        "visible_modules": memory.modules,
        "per_module_max": memory.per_module_max,
        "unaccounted": list(memory.unaccounted),
        "addresses_real": memory.addresses_real,
        "unplaced": memory.unplaced,
        "vmallocinfo_reads": memory.reads,
        "settled": memory.settled,
        "second_look": memory.second_look,
        "module_areas": memory.module_areas,
    }


def _unaccounted_summary(memory: ModuleMemory) -> str:
    where = ", ".join(memory.unaccounted)
    how = (
        ""
        if memory.addresses_real
        else " (vmallocinfo hashes addresses here: placed by the listed modules' addresses "
        "around it)"
    )
    return (
        f"Module-loader memory at {where}{how} holds no address of any listed module"
        f"{_held_note(memory)}: memory of no listed module."
    )


def _what_modules_hold(memory: ModuleMemory) -> str:
    if memory.module_areas is None:
        return f"the {memory.modules} visible modules can hold ({memory.per_module_max} each)"
    return f"the {memory.module_areas} areas the listed modules' struct module records"


def _held_note(memory: ModuleMemory) -> str:
    return ", on a second look too" if memory.second_look else ""


def _assess_memory(memory: ModuleMemory) -> list[Finding]:
    if memory.unaccounted:
        summary = _unaccounted_summary(memory)
    elif memory.excess > 0:
        summary = (
            f"vmallocinfo shows {memory.allocations} module-loader allocations, more than "
            f"{_what_modules_hold(memory)}{_held_note(memory)}: memory of a module no "
            "view lists."
        )
    else:
        return []
    evidence = _memory_evidence(memory)
    return [
        finding(NAME, "hidden-module", "module memory", summary, evidence, disposition=TAMPERING)
    ]


def _assess_taints(name: str, letters: str) -> list[Finding]:
    found = []
    for letter in sorted(set(letters)):
        technique, severity, meaning = MODULE_TAINTS.get(
            letter, ("tainted-module", Severity.LOW, f"taint {letter}")
        )
        found.append(
            finding(
                NAME,
                technique,
                f"module {name}",
                f"Module {name} tainted the kernel ({letter}): {meaning}.",
                {"module": name, "taint": letter},
                severity=severity,
                attack_id=MODULE_LOAD if severity >= Severity.MEDIUM else None,
            )
        )
    return found


def _taints_by_module(records: ModulesRecords) -> dict[str, str]:
    taints: dict[str, str] = {}
    for name, letters in [(m.name, m.taints) for m in records.proc_modules] + [
        (m.name, m.taints) for m in records.sysfs_modules
    ]:
        taints[name] = "".join(sorted(set(taints.get(name, "") + letters)))
    return taints


def _assess_state(module: ProcModule) -> list[Finding]:
    if module.state not in TRANSIENT_STATES:
        return []
    return [
        finding(
            NAME,
            "module-in-transition",
            f"module {module.name}",
            f"Module {module.name} is {module.state.lower()}.",
            {"module": module.name, "state": module.state},
        )
    ]


def _assess_missing_list(missing: ModuleListMissing) -> Finding:
    return finding(
        NAME,
        "module-list-removed",
        PROC_MODULES,
        "/proc/modules is gone although the kernel has a module loader: removing it hides "
        "every module from lsmod.",
        {"loader_symbols": list(missing.loader_symbols)},
        disposition=Disposition.TAMPERING,
    )


def assess_records(records: ModulesRecords) -> list[Finding]:
    found = [f for v in records.views for f in _assess_views(v)]
    found += _assess_memory(records.memory) if records.memory else []
    found += [f for m in records.proc_modules for f in _assess_state(m)]
    found += [
        f for n, t in sorted(_taints_by_module(records).items()) for f in _assess_taints(n, t)
    ]
    missing = records.list_missing
    return found + ([_assess_missing_list(missing)] if missing else [])
