"""The module loader's memory in /proc/vmallocinfo, on text captured in the lab's 6.1 and 6.12
guests (tests/fixtures/6.1-lab-hidden-module and 6.12-lab-hidden-module, see their READMEs):
pg_nf_hook hidden (`hide=1`), with kptr_restrict 0, so vmallocinfo's addresses are hashed;
and a 6.1 read that skipped lines."""

from __future__ import annotations

import shutil
from pathlib import Path

from patchguard.findings import Disposition, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.proc_modules import parse_proc_modules
from patchguard.kernel.vmallocinfo import VmallocArea, distinct, placed, run_start, runs
from patchguard.surfaces.modules import ModulesSurface, loader_areas, parse_vmallocinfo
from patchguard.surfaces.modules.assess import _assess_memory
from patchguard.surfaces.modules.collect import _Reading, held, settled_loader_areas
from patchguard.surfaces.modules.records import ModuleMemory

ROOT = Path(__file__).parent.parent / "fixtures" / "6.1-lab-hidden-module"
NEWER = ROOT.parent / "6.12-lab-hidden-module"
# pg_nf_hook's text, data and rodata on 6.12, and their lines in its proc/vmallocinfo (hashed)
HIDDEN_NEWER = (
    "0xffffffffc0586000-0xffffffffc0588000",
    "0xffffffffc0588000-0xffffffffc058a000",
    "0xffffffffc058a000-0xffffffffc058c000",
)
HIDDEN_NEWER_LINES = ("0x00000000479c0a79-", "0x000000005ee41bac-", "0x000000009316476c-")
HIDDEN = "0xffffffffc0381000-0xffffffffc0386000"  # where pg_nf_hook's hook function ran
HIDDEN_LINE = "0x000000005111f417-"  # its line in proc/vmallocinfo (hashed)


def loader(path: Path) -> list[VmallocArea]:
    return distinct(loader_areas(parse_vmallocinfo(path.read_text())))


def bases() -> list[int]:
    modules = parse_proc_modules((ROOT / "proc/modules").read_text())
    return [m.address for m in modules if m.address]


def memory_of(root: Path) -> ModuleMemory:
    memory = ModulesSurface().collect(Kernel(root)).records.memory
    assert memory is not None
    return memory


def hidden_findings(root: Path) -> list[str]:
    surface = ModulesSurface()
    found = surface.assess(surface.collect(Kernel(root)))
    return [f.summary for f in found if f.technique == "hidden-module"]


def copy_without(tmp_path: Path, *needles: str, root: Path = ROOT) -> Path:
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    vmalloc = tmp_path / "proc/vmallocinfo"
    lines = vmalloc.read_text().splitlines(True)
    vmalloc.write_text("".join(line for line in lines if not any(n in line for n in needles)))
    return tmp_path


def test_hidden_module_memory_is_named_although_addresses_are_hashed() -> None:
    memory = memory_of(ROOT)
    assert memory.addresses_real is False
    assert memory.unaccounted == (HIDDEN,)
    # read twice, then twice again 50 ms later: what looked hidden is reported only if it held
    assert (memory.allocations, memory.modules, memory.reads, memory.settled) == (19, 18, 4, True)
    assert memory.second_look
    surface = ModulesSurface()
    found = [
        f for f in surface.assess(surface.collect(Kernel(ROOT))) if f.subject == "module memory"
    ]
    assert [(f.severity, f.disposition) for f in found] == [(Severity.HIGH, Disposition.TAMPERING)]
    assert f"at {HIDDEN} (vmallocinfo hashes addresses here" in found[0].summary
    assert "on a second look too" in found[0].summary
    assert found[0].evidence["unaccounted"] == [HIDDEN]


def test_runs_are_placed_where_the_bases_agree_and_nothing_contradicts() -> None:
    areas = loader(ROOT / "proc/vmallocinfo")
    assert sorted(len(run) for run in runs(areas)) == [3, 4, 12]
    where = placed(areas, bases())
    assert len(where) == 19
    assert [f"{a.start:#x}-{a.end:#x}" for a in where if a.start not in bases()] == [HIDDEN]
    # virtio_ring's run: 0xffffffffc021d000 gets as many votes (module sizes repeat), but
    # virtio_pci's base would lie inside one of its areas there.
    (virtio,) = [run for run in runs(areas) if len(run) == 3]
    assert run_start(virtio, bases()) == 0xFFFFFFFFC0201000
    hidden = [a for a in areas if f"{a.start:#018x}-" == HIDDEN_LINE]
    assert len(hidden) == 1 and run_start(hidden, bases()) is None  # one area: one vote at most


def test_freed_init_sections_do_not_account_for_memory(tmp_path: Path) -> None:
    strtab = int((ROOT / "sys/module/9pnet/sections/.strtab").read_text(), 16)
    assert 0xFFFFFFFFC0381000 <= strtab < 0xFFFFFFFFC0386000  # stale: 9pnet's init memory
    # While 9pnet is coming, its init memory is live and its .strtab does account for it.
    shutil.copytree(ROOT, tmp_path, dirs_exist_ok=True)
    (tmp_path / "sys/module/9pnet/initstate").write_text("coming\n")
    assert memory_of(tmp_path).unaccounted == ()


def test_without_the_hidden_area_nothing_is_reported(tmp_path: Path) -> None:
    clean = copy_without(tmp_path, HIDDEN_LINE)
    memory = memory_of(clean)
    assert (memory.allocations, memory.unaccounted) == (18, ())
    assert hidden_findings(clean) == []


def test_a_line_printed_twice_is_counted_once(tmp_path: Path) -> None:
    # Under fork churn the lab's reads printed lines twice (221 in 600 reads): seq_file finds
    # its place again by line number, and an area allocated meanwhile below it shifts them.
    clean = copy_without(tmp_path, HIDDEN_LINE)
    vmalloc = clean / "proc/vmallocinfo"
    lines = vmalloc.read_text().splitlines(True)
    twice = next(i for i, line in enumerate(lines) if "load_module+" in line)
    vmalloc.write_text("".join(lines[: twice + 1] + lines[twice:]))
    memory = memory_of(clean)
    assert (memory.allocations, memory.reads, memory.second_look) == (18, 2, False)
    assert hidden_findings(clean) == []


def test_a_read_that_skipped_lines_is_read_again(tmp_path: Path) -> None:
    skipped = loader(ROOT / "reads/vmallocinfo-skipped")
    after = loader(ROOT / "reads/vmallocinfo-after")
    assert len(set(after) - set(skipped)) == 2 and set(skipped) < set(after)
    shutil.copytree(ROOT, tmp_path, dirs_exist_ok=True)
    shutil.copy(ROOT / "reads/vmallocinfo-after", tmp_path / "proc/vmallocinfo")
    look = settled_loader_areas(_Reading("modules", Kernel(tmp_path)), skipped)
    assert (look.areas, look.reads, look.settled) == (tuple(after), 3, True)
    agreed = settled_loader_areas(_Reading("modules", Kernel(tmp_path)), after)
    assert (agreed.reads, agreed.settled) == (2, True)


def test_newer_kernel_hidden_module_areas_are_named_where_the_count_cannot() -> None:
    memory = memory_of(NEWER)
    assert memory.addresses_real is False and memory.per_module_max == 7
    assert memory.excess <= 0  # 45 areas: 12 modules could hold 84
    assert memory.unaccounted == HIDDEN_NEWER
    assert [s for s in hidden_findings(NEWER) if ", ".join(HIDDEN_NEWER) in s]


def test_newer_kernel_without_the_hidden_areas_nothing_is_reported(tmp_path: Path) -> None:
    clean = copy_without(tmp_path, *HIDDEN_NEWER_LINES, root=NEWER)
    assert memory_of(clean).allocations == 42
    assert hidden_findings(clean) == []


def test_what_a_second_look_no_longer_sees_is_not_reported() -> None:
    # In the lab, right after insmod of a visible module, 6.1 showed 19 loader areas for 18
    # modules (its init area, freed after an RCU grace period) and 18 at 50 ms.
    init_area = "0xffffffffc0391000-0xffffffffc0393000"
    first = ModuleMemory(19, 18, 1, unaccounted=(init_area,), reads=2)
    again = held(first, ModuleMemory(18, 18, 1, reads=2))
    assert (again.unaccounted, again.excess, again.reads, again.second_look) == ((), 0, 4, True)
    # an area seen only on the second look waits for a scan of its own
    late = ModuleMemory(19, 18, 1, unaccounted=(init_area,))
    assert held(ModuleMemory(18, 18, 1), late).unaccounted == ()


def test_areas_struct_module_records_are_counted_exactly() -> None:
    # The clean 6.12 guest: 11 listed modules, 39 loader areas, 39 recorded in their struct
    # modules (tests/live/test_modules_live.py there). Four areas more, hashed and lying alone
    # so that no start places them, are four no listed module holds; counting 7 a module
    # (77) would let them pass.
    clean = ModuleMemory(39, 11, 7, addresses_real=False, module_areas=39)
    assert clean.excess == 0 and _assess_memory(clean) == []
    hidden = ModuleMemory(43, 11, 7, addresses_real=False, unplaced=4, module_areas=39)
    assert hidden.excess == 4
    (found,) = _assess_memory(hidden)
    assert found.disposition is Disposition.TAMPERING and found.evidence["module_areas"] == 39
    assert "more than the 39 areas the listed modules' struct module records" in found.summary
    assert ModuleMemory(43, 11, 7, addresses_real=False, unplaced=4).excess < 0


RELOADED = ROOT.parent / "6.12-lab-modules-reloaded"


def test_sections_place_the_runs_the_bases_cannot() -> None:
    areas = loader(RELOADED / "proc/vmallocinfo")
    modules = parse_proc_modules((RELOADED / "proc/modules").read_text())
    # bases start only text areas from 6.4: never more than half of a run
    assert (len(areas), len(placed(areas, [m.address for m in modules if m.address]))) == (57, 0)
    memory = memory_of(RELOADED)
    assert (memory.addresses_real, memory.unplaced, memory.unaccounted) == (False, 0, ())
    assert hidden_findings(RELOADED) == []


def test_a_run_that_ties_is_placed_once_other_runs_claim_their_bases() -> None:
    root = ROOT.parent / "6.1-lab-modules-reloaded"
    areas = loader(root / "proc/vmallocinfo")
    modules = {m.address: m.name for m in parse_proc_modules((root / "proc/modules").read_text())}
    bases = [a for a in modules if a]
    (tie,) = [run for run in runs(areas) if [a.size for a in run] == [24576, 20480]]
    assert run_start(tie, bases) is None  # 9pnet_virtio + dummy fit as well
    where = placed(areas, bases)
    assert [a.start for a in where] == sorted(bases)
    tied = {
        modules[a.start]: a.size
        for a in where
        if a.start in (0xFFFFFFFFC0226000, 0xFFFFFFFFC022C000)
    }
    assert tied == {"virtio_pci_modern_dev": 24576, "virtio_pci_legacy_dev": 20480}
    memory = memory_of(root)
    assert (memory.unplaced, memory.unaccounted) == (0, ())
    assert hidden_findings(root) == []


def test_two_bases_lining_up_by_chance_do_not_place_a_run() -> None:
    root = ROOT.parent / "6.12-lab-coincident-bases"
    areas = loader(root / "proc/vmallocinfo")
    modules = parse_proc_modules((root / "proc/modules").read_text())
    bases = [m.address for m in modules if m.address]
    (four,) = [run for run in runs(areas) if [a.size for a in run] == [40960, 16384, 20480, 8192]]
    assert run_start(four, bases) is None  # 9p's and 9pnet_virtio's bases: 2 of 4 areas
    memory = memory_of(root)
    assert (memory.unplaced, memory.unaccounted) == (0, ())
    assert hidden_findings(root) == []
