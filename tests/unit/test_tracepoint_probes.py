"""Naming a tracepoint probe's callback by bounds (captured kallsyms and module ranges), and
the findings scan makes of the probes: code of no module, a hidden module's code, set_event
hiding an event memory holds; names from the kernel are escaped."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from patchguard.findings import Severity
from patchguard.kernel.attribution import Attributor
from patchguard.kernel.kallsyms import AddressRange, SymbolTable
from patchguard.surfaces.tracing.probes import kind_of, probe_findings
from patchguard.surfaces.tracing.records import TracepointProbe, TracingRecords

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
