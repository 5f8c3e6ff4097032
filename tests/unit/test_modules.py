"""The modules surface on fixture text.

The 6.18 "fc" machine has no loadable modules at all (no /proc/modules, only built-ins in
/sys/module), so tests/fixtures/handmade/modules-hidden is HAND-WRITTEN, not captured. Its format
was taken from the kernel source read through the search tool: m_show(), print_unload_info() and
module_flags() in kernel/module/ (`name size refcount deps, state 0x%px (taints)`),
show_initstate()/show_taint() for /sys/module/<name>, and vmalloc_info_show() (s_show() before
6.9) in mm/vmalloc.c (`0x%pK-0x%pK %7ld %pS pages=%d phys=%pa ioremap vmalloc N0=%u`). The tree
is a 6.1 kernel with a module ("rkit") taken off the module list but left in sysfs and kallsyms,
and loader memory no view accounts for. The lab (a stock Debian 6.1 guest) will capture real
files. tests/fixtures/6.18-fc holds what this machine gives: built-ins in /sys/module, its
vmallocinfo, and no /proc/modules.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from patchguard.findings import Disposition, Finding, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.proc_modules import ProcModule, parse_proc_modules
from patchguard.scan import run_scan
from patchguard.surfaces.base import Status, SurfaceState
from patchguard.surfaces.modules import (
    NO_MODULE_SUPPORT,
    ModulesSurface,
    ModuleViews,
    SysfsModule,
    VmallocArea,
    areas_per_module,
    cross_view,
    kallsyms_module_names,
    loader_areas,
    parse_taint_letters,
    parse_vmallocinfo,
    second_look,
    unaccounted_areas,
)
from patchguard.surfaces.modules.paths import AREAS_PER_MODULE, AREAS_PER_MODULE_OLD

FIXTURES = Path(__file__).parent.parent / "fixtures"
HIDDEN = FIXTURES / "handmade/modules-hidden"
FC = FIXTURES / "6.18-fc"


# --- parsers ------------------------------------------------------------------------------------


def test_proc_modules_fixture() -> None:
    modules = parse_proc_modules((HIDDEN / "proc/modules").read_text())
    assert [m.name for m in modules] == ["e1000e", "vboxdrv", "vboxnetflt", "btusb"]
    assert modules[0] == ProcModule("e1000e", 327680, 0, (), "Live", 0xFFFFFFFFC0400000, "")
    assert modules[1].users == ("vboxnetflt",) and modules[1].taints == "OE"
    assert modules[3].state == "Loading"


def test_proc_modules_variants() -> None:
    text = (
        "msr 16384 0 - Live 0xffffffffc0a05000 (E)\n"
        "nvidia 56823808 12 nvidia_uvm,nvidia_modeset, Live 0x0000000000000000 (POE)\n"
        "going 16384 0 - Unloading 0xffffffffc0b00000 (OE-)\n"
        "perm 16384 - [permanent], Live 0xffffffffc0c00000\n"
        "short line\n"
    )
    msr, nvidia, going, perm = parse_proc_modules(text)
    assert msr == ProcModule("msr", 16384, 0, (), "Live", 0xFFFFFFFFC0A05000, "E")
    assert nvidia.address is None and nvidia.taints == "POE"
    assert nvidia.users == ("nvidia_uvm", "nvidia_modeset")
    assert (going.state, going.taints) == ("Unloading", "OE")  # "-": going, not a taint
    assert perm.refcount is None and perm.users == ("[permanent]",)


def test_taint_letters() -> None:
    assert parse_taint_letters("OE\n") == "OE"
    assert parse_taint_letters("(POE+)") == "POE"
    assert parse_taint_letters("\n") == ""


def test_vmallocinfo_fixture() -> None:
    areas = parse_vmallocinfo((HIDDEN / "proc/vmallocinfo").read_text())
    assert len(areas) == 14
    ioremap = areas[1]
    assert (ioremap.caller, ioremap.kinds, ioremap.pages) == (
        "acpi_os_map_iomem",
        ("ioremap",),
        None,
    )
    e1000e = areas[2]
    assert e1000e == VmallocArea(
        0xFFFFFFFFC0400000,
        0xFFFFFFFFC0451000,
        331776,
        "load_module",
        None,
        ("vmalloc",),
        80,
    )
    assert e1000e.real_addresses
    assert (areas[10].caller, areas[10].caller_module) == ("e1000e_setup_tx_resources", "e1000e")
    assert (areas[12].caller, areas[12].kinds) == (None, ("vm_map_ram",))
    assert (areas[13].caller, areas[13].kinds) == (None, ("unpurged",))
    assert len(loader_areas(areas)) == 7


def test_vmallocinfo_fc_capture() -> None:
    # The real file: %pK hashed every address (kptr_restrict 0); no module loader memory.
    text = (FC / "proc/vmallocinfo").read_text()
    areas = parse_vmallocinfo(text)
    assert len(areas) == len(text.splitlines()) > 100
    assert not any(a.real_addresses for a in areas)
    assert loader_areas(areas) == []
    assert {a.caller for a in areas} >= {"bpf_prog_alloc_no_stats", "kernel_clone", None}
    assert all(a.size == a.end - a.start or not a.real_addresses for a in areas)


def test_kallsyms_module_names_without_addresses() -> None:
    text = (
        "0000000000000000 T _stext\n"
        "0000000000000000 t e1000_probe\t[e1000e]\n"
        "0000000000000000 t ftrace_trampoline\t[__builtin__ftrace]\n"
        "0000000000000000 t bpf_prog_6deef7357e7b4530_hook\t[bpf]\n"
    )
    assert kallsyms_module_names(text) == {"e1000e"}


@pytest.mark.parametrize(
    ("release", "per_module"),
    [
        ("6.1.0-18-amd64", AREAS_PER_MODULE_OLD),
        ("5.10.0-28-amd64", AREAS_PER_MODULE_OLD),
        ("6.4.0", AREAS_PER_MODULE),
        ("6.18.44-fc-v669", AREAS_PER_MODULE),
        (None, AREAS_PER_MODULE),
    ],
)
def test_areas_per_module(release: str | None, per_module: int) -> None:
    assert areas_per_module(release) == per_module


def test_cross_view() -> None:
    full = {"proc_modules": {"a", "b"}, "sysfs": {"a", "b", "rk"}}
    partial = {"vmalloc_callers": {"b", "rk", "gone"}}
    views = {v.name: v for v in cross_view(full, partial, transient=["b"])}
    assert views["a"] == ModuleViews("a", ("proc_modules", "sysfs"), ())
    assert views["rk"] == ModuleViews("rk", ("sysfs", "vmalloc_callers"), ("proc_modules",))
    # A partial view only adds sightings: "a" is not hidden from vmalloc_callers.
    assert views["gone"].hidden_from == ("proc_modules", "sysfs")
    assert views["b"].transient
    assert cross_view({}) == []


def test_unaccounted_areas() -> None:
    a = VmallocArea(0x1000, 0x2000, 0x1000, "load_module")
    b = VmallocArea(0x2000, 0x3000, 0x1000, "load_module")
    assert unaccounted_areas([a, b], [0x1800]) == [b]
    assert unaccounted_areas([a, b], [0x2000, 0x1000]) == []  # start inclusive
    assert unaccounted_areas([a], [0x2000]) == [a]  # end exclusive


# --- the surface over fixture roots -------------------------------------------------------------


def findings_by_subject(root: Path) -> dict[tuple[str, str], Finding]:
    surface = ModulesSurface()
    return {(f.technique, f.subject): f for f in surface.assess(surface.collect(Kernel(root)))}


def test_surface_finds_the_hidden_module() -> None:
    surface = ModulesSurface()
    state = surface.collect(Kernel(HIDDEN))
    assert state.gaps == () and state.status is Status.OK
    assert state.counts == {
        "modules": 5,
        "hidden": 2,
        "proc_modules": 4,
        "sysfs": 4,
        "kallsyms": 5,
        "loader_allocations": 7,
    }
    sysfs = {r.name: r for r in state.records.sysfs_modules}
    assert "printk" not in sysfs  # a built-in: no initstate
    assert sysfs["rkit"] == SysfsModule("rkit", "live", "OE", 20480)
    memory = state.records.memory
    assert memory is not None
    assert memory.unaccounted == ("0xffffffffc0a60000-0xffffffffc0a67000",)
    assert (memory.per_module_max, memory.addresses_real) == (AREAS_PER_MODULE_OLD, True)

    found = {(f.technique, f.subject): f for f in surface.assess(state)}
    rkit = found[("hidden-module", "module rkit")]
    assert (rkit.severity, rkit.disposition, rkit.attack_id) == (
        Severity.HIGH,
        Disposition.TAMPERING,
        "T1014",
    )
    assert rkit.evidence["seen_by"] == ["sysfs", "kallsyms", "vmalloc_callers"]
    assert rkit.evidence["hidden_from"] == ["proc_modules"]
    assert found[("hidden-module", "module memory")].severity is Severity.HIGH
    # btusb is loading: sysfs has no entry yet, a race, not hiding.
    assert found[("hidden-module", "module btusb")].severity is Severity.LOW
    assert found[("module-in-transition", "module btusb")].severity is Severity.INFO
    assert found[("unsigned-module", "module vboxdrv")].severity is Severity.MEDIUM
    assert found[("out-of-tree-module", "module vboxnetflt")].attack_id == "T1547.006"
    assert not [k for k in found if k[1] == "module e1000e"]


def test_section_addresses_account_for_data_areas(tmp_path: Path) -> None:
    # vboxdrv's data area holds no symbol: only /sys/module/vboxdrv/sections/.data names it.
    shutil.copytree(HIDDEN, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "sys/module/vboxdrv/sections")
    memory = ModulesSurface().collect(Kernel(tmp_path)).records.memory
    assert memory is not None and memory.unaccounted == (
        "0xffffffffc0690000-0xffffffffc06ab000",
        "0xffffffffc0a60000-0xffffffffc0a67000",
    )


def test_hashed_addresses_fall_back_to_counting(tmp_path: Path) -> None:
    # kptr_restrict 0: %pK hashes vmallocinfo addresses; only the count can be compared.
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.1.0-18-amd64\n")
    (tmp_path / "proc/modules").write_text("msr 16384 0 - Live 0x0000000000000000\n")
    (tmp_path / "proc/vmallocinfo").write_text(
        "0x00000000c09ae984-0x00000000fce38576   20480 load_module+0x1c5a/0x2300 pages=4 vmalloc\n"
        "0x000000005a969f8b-0x0000000070cb2c05   12288 load_module+0x1c5a/0x2300 pages=2 vmalloc\n"
        "0x000000008633f826-0x000000001dd41b05    8192 load_module+0x1c5a/0x2300 pages=1 vmalloc\n"
    )
    found = findings_by_subject(tmp_path)
    memory = found[("hidden-module", "module memory")]
    assert memory.evidence["loader_allocations"] == 3
    assert memory.evidence["addresses_real"] is False
    # Two allocations fit one 6.1 module (core + init): no finding.
    (tmp_path / "proc/vmallocinfo").write_text(
        "0x00000000c09ae984-0x00000000fce38576   20480 load_module+0x1c5a/0x2300 pages=4 vmalloc\n"
    )
    assert ("hidden-module", "module memory") not in findings_by_subject(tmp_path)


def without(text: str, *needles: str) -> str:
    return "".join(line for line in text.splitlines(True) if not any(n in line for n in needles))


def test_a_clean_tree_has_no_hidden_module(tmp_path: Path) -> None:
    shutil.copytree(HIDDEN, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "sys/module/rkit")
    kallsyms = tmp_path / "proc/kallsyms"
    kallsyms.write_text(without(kallsyms.read_text(), "rkit"))
    vmalloc = tmp_path / "proc/vmallocinfo"
    # rkit's area (c0a4...), the area no view has (c0a6...) and rkit's own vmalloc.
    vmalloc.write_text(without(vmalloc.read_text(), "0xffffffffc0a4", "0xffffffffc0a6", "rkit"))
    found = findings_by_subject(tmp_path)
    assert [k for k in found if k[0] == "hidden-module"] == [("hidden-module", "module btusb")]


def test_module_list_removed_while_the_loader_is_built(tmp_path: Path) -> None:
    shutil.copytree(HIDDEN, tmp_path, dirs_exist_ok=True)
    (tmp_path / "proc/modules").unlink()
    surface = ModulesSurface()
    state = surface.collect(Kernel(tmp_path))
    (gap,) = state.gaps
    assert "module loader is built (load_module)" in gap.reason
    found = {f.technique: f for f in surface.assess(state)}
    assert found["module-list-removed"].severity is Severity.HIGH


def test_surface_on_the_fc_capture() -> None:
    # No module support: every view is empty and that is said, not passed over.
    surface = ModulesSurface()
    state = surface.collect(Kernel(FC))
    assert [(g.what, g.reason) for g in state.gaps] == [
        ("loadable module list (/proc/modules)", NO_MODULE_SUPPORT)
    ]
    assert state.status is Status.UNAVAILABLE
    assert not state.records
    assert state.counts == {
        "modules": 0,
        "hidden": 0,
        "sysfs": 0,
        "kallsyms": 0,
        "loader_allocations": 0,
    }
    assert surface.assess(state) == []


# --- a mismatch is read twice before it is reported ---------------------------------------------


def test_a_mismatch_that_settles_on_the_second_look_is_not_reported() -> None:
    """msr loaded after kallsyms was first read (as `modprobe msr` did mid-scan): the second
    reading sees it everywhere. rkit stays off /proc/modules in both readings."""
    full = {"sysfs": {"msr", "rkit"}, "proc_modules": {"msr"}, "kallsyms": {"rkit"}}
    first = cross_view(full)
    assert {v.name for v in first if v.hidden_from} == {"msr", "rkit"}
    again = {**full, "kallsyms": {"msr", "rkit"}, "sysfs": {"msr", "rkit", "late"}}
    settled = {v.name: v for v in second_look(first, cross_view(again))}
    assert settled["msr"].hidden_from == () and not settled["msr"].second_look
    assert settled["rkit"].hidden_from == ("proc_modules",) and settled["rkit"].second_look
    # hidden only in the second reading (it loaded between them): not reported as hidden
    assert settled["late"].hidden_from == () and not settled["late"].second_look


def test_the_finding_says_it_held_on_a_second_look() -> None:
    state = ModulesSurface().collect(Kernel(HIDDEN))
    findings = ModulesSurface().assess(state)
    (rkit,) = [f for f in findings if (f.technique, f.subject) == ("hidden-module", "module rkit")]
    assert "on a second look too" in rkit.summary and rkit.evidence["second_look"] is True


class _Recorder:
    """A surface that records when it is asked to prepare and to collect."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.title, self.calls = name, name, calls

    def prepare(self, kernel: Kernel) -> None:
        self.calls.append(f"prepare {self.name}")

    def collect(self, kernel: Kernel) -> SurfaceState:
        self.calls.append(f"collect {self.name}")
        return SurfaceState(self.name, [])

    def assess(self, state: SurfaceState) -> list[Finding]:
        return []


def test_surfaces_prepare_before_any_surface_reads(tmp_path: Path) -> None:
    calls: list[str] = []
    surfaces = [_Recorder("entry", calls), _Recorder("modules", calls)]
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("b\n")
    run_scan(Kernel(tmp_path), surfaces, workers=2)
    assert sorted(calls[:2]) == ["prepare entry", "prepare modules"]
    assert sorted(calls[2:]) == ["collect entry", "collect modules"]
    calls.clear()
    run_scan(Kernel(tmp_path), surfaces[:1])  # no modules view to protect: nothing loaded early
    assert calls == ["collect entry"]
