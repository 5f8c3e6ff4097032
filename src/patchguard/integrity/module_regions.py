"""Module code in the baseline: each live module's text, jump table and static call sites as
regions `module_text.<name>`, `module_jump_table.<name>` and `module_static_call_sites.<name>`.

A module's text is checked like core text, its tables explain its own patch sites. Modules
come and go legitimately: a module the baseline has that is gone or now elsewhere, and a live
module the baseline lacks, are said (info, with their addresses), never compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from patchguard.findings import Disposition, Finding, Gap, Severity
from patchguard.integrity.store import RegionEntry
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.module_layout import (
    ModuleText,
    layout,
    read_module,
    struct_module_address,
)
from patchguard.kernel.proc_modules import PROC_MODULES, parse_proc_modules
from patchguard.surfaces.kernel_text import NAME

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


def live_modules(kernel: Kernel) -> LiveModules:
    """Every Live module's text and tables; a module that cannot be read is a gap."""
    try:
        listed = parse_proc_modules(kernel.read_text(PROC_MODULES))
    except KernelAccessError:
        return LiveModules({}, [])  # no module support: nothing to baseline (modules says so)
    names = [m.name for m in listed if m.state == "Live"]
    if not names:
        return LiveModules({}, [])
    try:
        offsets = kernel.vmlinux_btf.derived(layout)  # once per kernel: ~20 ms of BTF lookups
        memory, syms = kernel.memory(), kernel.kallsyms
    except (KernelAccessError, OSError, ValueError) as exc:
        return LiveModules({}, [Gap(NAME, "module_text", f"module layout unknown: {exc}")])
    found: dict[str, ModuleText] = {}
    gaps: list[Gap] = []
    # one search of kallsyms for every module's __this_module, not one per module
    structs = {s.module: s.address for s in syms.find("__this_module") if s.module}
    for name in names:
        try:
            address = structs.get(name) or struct_module_address(
                _sysfs_struct_address(kernel, name)
            )
            if address is None:
                raise KernelAccessError(name, "no __this_module symbol or sysfs section address")
            found[name] = read_module(memory, offsets, name, address)
        except KernelAccessError as exc:
            gaps.append(Gap(NAME, TEXT + name, str(exc)))
    return LiveModules(found, gaps)


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
