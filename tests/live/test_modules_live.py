"""The modules surface on the running kernel.

On the 6.18 "fc" machine there is no /proc/modules and /sys/module holds only built-ins (no
`initstate`): the state must be UNAVAILABLE with the no-module-support reason and no findings.
On a kernel with loadable modules (the Debian 6.1 lab) the records must match what the kernel
lists, and a clean guest must show no hidden module. Each test records which case ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchguard.findings import Finding, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.proc_modules import parse_proc_modules
from patchguard.surfaces.base import Status, SurfaceState
from patchguard.surfaces.modules import NO_MODULE_SUPPORT, ModulesSurface
from patchguard.surfaces.modules.collect import _memory_starts, _Reading

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="vmallocinfo and kallsyms addresses need root"),
]

PROC_MODULES = Path("/proc/modules")


@pytest.fixture(scope="module")
def scanned() -> tuple[SurfaceState, list[Finding]]:
    surface = ModulesSurface()
    state = surface.collect(Kernel())
    return state, surface.assess(state)


def case(request: pytest.FixtureRequest, text: str) -> None:
    request.node.user_properties.append(("case", text))
    print(f"case: {text}")


def loaded_in_sysfs() -> set[str]:
    return {p.parent.name for p in Path("/sys/module").glob("*/initstate")}


def test_module_list(
    scanned: tuple[SurfaceState, list[Finding]], request: pytest.FixtureRequest
) -> None:
    state, findings = scanned
    if not PROC_MODULES.exists():
        case(request, "no /proc/modules: no loadable module support")
        assert [(g.what, g.reason) for g in state.gaps] == [
            ("loadable module list (/proc/modules)", NO_MODULE_SUPPORT)
        ]
        assert state.status is Status.UNAVAILABLE
        assert loaded_in_sysfs() == set()  # /sys/module holds built-ins only
        assert not any(state.counts.values())
        assert findings == []
        return
    case(request, "/proc/modules present: records asserted")
    listed = {m.name for m in parse_proc_modules(PROC_MODULES.read_text())}
    recorded = {r.name for r in state.records.proc_modules}
    assert len(listed ^ recorded) <= 2  # a module may load or unload between the two reads
    assert state.counts["proc_modules"] == len(recorded)


def test_sysfs_view(
    scanned: tuple[SurfaceState, list[Finding]], request: pytest.FixtureRequest
) -> None:
    state, _ = scanned
    recorded = {r.name for r in state.records.sysfs_modules}
    truth = loaded_in_sysfs()
    case(request, f"{len(truth)} loaded modules in /sys/module")
    assert len(truth ^ recorded) <= 2
    assert state.counts["sysfs"] == len(recorded)


def test_no_module_is_hidden(
    scanned: tuple[SurfaceState, list[Finding]], request: pytest.FixtureRequest
) -> None:
    state, findings = scanned
    hidden = [f for f in findings if f.technique == "hidden-module" and f.severity >= Severity.HIGH]
    case(request, f"{state.counts['modules']} modules across the views")
    assert hidden == [], [f.summary for f in hidden]


def test_module_areas_start_where_struct_module_says(request: pytest.FixtureRequest) -> None:
    """Each listed module's base (/proc/modules, real addresses for root) is one of the area
    starts read from the modules' struct module: what places hashed vmallocinfo areas."""
    kernel = Kernel()
    starts = _memory_starts(_Reading("modules", kernel))
    if not PROC_MODULES.exists():
        case(request, "no /proc/modules: no module list in memory either")
        assert starts is None
        return
    bases = {m.address for m in parse_proc_modules(PROC_MODULES.read_text()) if m.address}
    case(request, f"{len(bases)} module bases against {len(starts or ())} area starts")
    assert starts is not None and bases and bases <= set(starts)


def test_every_loader_area_is_held_by_a_listed_module(
    scanned: tuple[SurfaceState, list[Finding]], request: pytest.FixtureRequest
) -> None:
    """On a clean kernel no area of the module loader is unaccounted, hashed or not (the lab's
    Debian guests hash them: kptr_restrict 0), and hashed ones number exactly what the listed
    modules' struct module records, placed or not (an area lying alone cannot be placed: one
    of 17 in a 6.1 boot)."""
    memory = scanned[0].records.memory
    if memory is None:
        case(request, "no module-loader areas in vmallocinfo")
        assert not PROC_MODULES.exists()
        return
    real = "real" if memory.addresses_real else "hashed"
    case(request, f"{memory.allocations} module-loader areas, {real}, {memory.unplaced} unplaced")
    assert memory.unaccounted == () and memory.excess <= 0, memory
    if not memory.addresses_real:
        assert memory.module_areas == memory.allocations, memory
