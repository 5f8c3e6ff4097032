"""Naming a tracepoint probe's callback by bounds (captured kallsyms and module ranges), and
the findings scan makes of the probes: code of no module, a hidden module's code, set_event
hiding an event memory holds; names from the kernel are escaped."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.memory_image import Image

from patchguard.findings import Severity
from patchguard.kernel import Kernel
from patchguard.kernel.attribution import Attributor
from patchguard.kernel.btf import Btf
from patchguard.kernel.kallsyms import AddressRange, SymbolTable
from patchguard.kernel.tracepoints import Layout, Probe, Tracepoint, TracepointReader, layout
from patchguard.surfaces.reading import Reading
from patchguard.surfaces.tracing.probes import Read, against_set_event, kind_of, probe_findings
from patchguard.surfaces.tracing.records import TracepointProbe, TracingRecords

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
TEXT = 0xFFFFFFFF81000000
MOD = 0xFFFFFFFFC0000000
SYMS = SymbolTable.parse(
    f"{TEXT:016x} T _stext\n"
    f"{TEXT + 0x100:016x} t __bpf_trace_sched_switch\n"
    f"{TEXT + 0x200:016x} t perf_trace_sched_switch\n"
    f"{TEXT + 0x300:016x} t trace_event_raw_event_sched_switch\n"
    f"{TEXT + 0x400:016x} t probe_sched_switch\n"
    f"{TEXT + 0x1000:016x} T _etext\n"
    f"{MOD + 0x10:016x} t mod_probe\t[mymod]\n"
)
NAMES = Attributor(
    SYMS, [AddressRange("text", TEXT, TEXT + 0x1000)], {"mymod": ((MOD, MOD + 0x100),)}, None
)


def kind(address: int) -> str:
    return kind_of(NAMES.attribute(address))


def test_the_kernels_own_probes_are_named_by_their_callbacks() -> None:
    assert kind(TEXT + 0x100) == "bpf" and kind(TEXT + 0x200) == "perf"
    assert kind(TEXT + 0x300) == "trace-event" and kind(TEXT + 0x400) == "kernel"
    assert kind(MOD + 0x10) == "module"


def test_past_a_modules_end_is_no_module_not_its_last_symbol() -> None:
    assert kind(MOD + 0x100) == "no-module" and kind(MOD + 0x2000) == "no-module"
    assert NAMES.name(MOD + 0x20) == "mod_probe+0x10 [mymod]"
    assert "memory of no listed module" in NAMES.name(MOD + 0x2000)


def probe(**changes: Any) -> TracepointProbe:
    base = TracepointProbe(
        "sched_switch",
        None,
        "0xffffc90000001000 (memory of no listed module; ...)",
        None,
        "no-module",
        "",
        10,
        0xFFFFC90000001000,
    )
    return replace(base, **changes)


def test_a_probe_in_memory_of_no_module_is_critical() -> None:
    (found,) = probe_findings(TracingRecords(tracepoint_probes=(probe(),)))
    assert found.technique == "tracepoint-probe-unowned-code"
    assert found.severity == Severity.CRITICAL and found.subject == "tracepoint sched_switch"
    assert "memory no kernel or listed module symbol covers" in found.summary


def test_a_hidden_modules_probe_names_it_and_the_views_that_hide_it() -> None:
    hidden = probe(hidden_module="rk", hidden_from=("/proc/modules", "/sys/module"))
    (found,) = probe_findings(TracingRecords(tracepoint_probes=(hidden,)))
    assert "memory of module rk, which /proc/modules and /sys/module do not list" in found.summary
    assert found.evidence["hidden_from"] == ["/proc/modules", "/sys/module"]


def test_named_probes_are_no_finding_and_a_hidden_event_is_a_lying_view() -> None:
    named = probe(callback_kind="module", callback="mod_probe+0x0 [mymod]", callback_module="mymod")
    event = probe(
        callback_kind="trace-event", callback="trace_event_raw_event_x+0x0", event_shown=True
    )
    assert probe_findings(TracingRecords(tracepoint_probes=(named, event))) == []
    lied = probe(
        callback_kind="trace-event", callback="trace_event_raw_event_x+0x0", event_shown=False
    )
    (found,) = probe_findings(TracingRecords(tracepoint_probes=(lied,)))
    assert found.technique == "filtered-view" and found.subject == "set_event"


def test_names_from_the_kernel_are_escaped() -> None:
    (found,) = probe_findings(TracingRecords(tracepoint_probes=(probe(tracepoint="a\x1b[2Jb"),)))
    assert "\x1b" not in found.summary and "\x1b" not in found.subject
    assert "\x1b" not in str(found.evidence["tracepoint"])


def test_a_program_bpf2_does_not_list_is_a_hidden_bpf_probe() -> None:
    said = "BPF prog 9 x tag 00"
    hidden = probe(callback_kind="bpf", owner=said, prog_ids=(9,), unlisted_ids=(9,))
    (found,) = probe_findings(TracingRecords(tracepoint_probes=(hidden,)))
    assert found.technique == "tracepoint-probe-hidden-bpf"
    assert found.severity == Severity.CRITICAL and "lack 9" in found.summary
    listed = probe(callback_kind="bpf", owner=said, prog_ids=(9,))
    assert probe_findings(TracingRecords(tracepoint_probes=(listed,))) == []


# --- set_event, on a captured tracefs tree and a memory image of the tracepoint ---------------

TRACEFS = "/sys/kernel/tracing"
TP, NAME, FUNCS = 0xFFFFFFFF82A00000, 0xFFFFFFFF82B00000, 0xFFFF888100000000


def held(lay: Layout, probes: int) -> Read:
    """sched_switch's struct tracepoint with `probes` probes, as memory holds it."""
    mem = Image()
    words = [0] * (lay.size // 8 + 1)
    words[lay.name // 8], words[lay.funcs // 8] = NAME, FUNCS
    mem.put_words(TP, *words)
    mem.put(NAME, b"sched_switch\0" + b"x" * 200)
    entry = [TEXT + 0x300] + [0] * (lay.func_size // 8 - 1)
    mem.put_words(FUNCS, *(entry * probes + [0] * (lay.func_size // 8) * 8))
    tp = Tracepoint(TP, "sched_switch", None, (Probe(TEXT + 0x300, 0, 10),))
    return Read(((None, tp),), frozenset(), TracepointReader(mem, lay, {}))


def event_shown(tmp_path: Path, set_event: str, lay: Layout, probes: int = 1) -> bool | None:
    (tmp_path / TRACEFS.lstrip("/")).mkdir(parents=True)
    (tmp_path / TRACEFS.lstrip("/") / "set_event").write_text(set_event)
    r = Reading("tracing", Kernel(tmp_path))
    event = probe(callback_kind="trace-event", callback="trace_event_raw_event_sched_switch")
    (marked,) = against_set_event(r, TRACEFS, [event], held(lay, probes))
    return marked.event_shown


@pytest.fixture(scope="module")
def lay() -> Layout:
    found = layout(Btf.parse(gzip.decompress(VMLINUX.read_bytes())))
    assert found is not None
    return found


def test_set_event_listing_the_event_agrees(tmp_path: Path, lay: Layout) -> None:
    assert event_shown(tmp_path, "sched:sched_switch\n", lay) is True


def test_set_event_lacking_an_event_memory_still_holds_lies(tmp_path: Path, lay: Layout) -> None:
    assert event_shown(tmp_path, "sched:sched_wakeup\n", lay) is False


def test_an_event_switched_off_meanwhile_is_no_lie(tmp_path: Path, lay: Layout) -> None:
    assert event_shown(tmp_path, "", lay, probes=0) is True
