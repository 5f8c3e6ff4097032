"""Tracepoint probes read from the running kernel's memory: a BPF raw tracepoint and a perf
tracepoint event with a BPF program, each found on its tracepoint with its callback named by
bounds and its owner named with this test's own program id. Every program and perf event goes
in a finally. (tracefs is read-only on these VMs: trace events and set_event are proved in the
lab.)"""

from __future__ import annotations

import os

import pytest
from support import bpfprogs as bp

from patchguard.findings import Severity
from patchguard.kernel import Kernel
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.syscall import BpfError
from patchguard.surfaces.reading import Reading
from patchguard.surfaces.tracing import TracingSurface
from patchguard.surfaces.tracing.probes import collect_probes
from patchguard.surfaces.tracing.records import TracepointProbe

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]

TRACEFS = "/sys/kernel/tracing"


def probes(kernel: Kernel) -> list[TracepointProbe]:
    r = Reading("tracing", kernel)
    collect_probes(r, TRACEFS)
    assert not [g for g in r.gaps if "struct tracepoint" in g.what], r.gaps
    return [p for p in r.records if isinstance(p, TracepointProbe)]


def on(found: list[TracepointProbe], tracepoint: str, prog_id: int) -> list[TracepointProbe]:
    return [p for p in found if p.tracepoint == tracepoint and prog_id in p.prog_ids]


def test_a_raw_tracepoint_program_is_named_on_its_tracepoint(kernel: Kernel) -> None:
    with bp.attach_raw_tracepoint("sched_process_hang", "pg_tp_raw") as prog:
        (mine,) = on(probes(kernel), "sched_process_hang", prog.prog_id)
    assert mine.callback_kind == "bpf" and mine.callback.startswith(
        "__bpf_trace_sched_process_hang+0x0"
    )
    assert mine.callback_module is None and "pg_tp_raw" in mine.owner
    assert mine.unlisted_ids == ()  # bpf(2) lists it: no view hides it
    # closed: the probe is gone from the tracepoint's funcs
    assert not on(probes(kernel), "sched_process_hang", prog.prog_id)


def test_a_perf_event_program_is_named_on_its_tracepoint(kernel: Kernel) -> None:
    with bp.attach_tracepoint("sched", "sched_kthread_stop_ret", "pg_tp_perf") as prog:
        (mine,) = on(probes(kernel), "sched_kthread_stop_ret", prog.prog_id)
    assert mine.callback_kind == "perf" and mine.callback.startswith("perf_trace_")
    assert mine.owner.startswith("perf events running ") and "pg_tp_perf" in mine.owner


def test_no_probe_of_this_kernel_runs_from_memory_of_no_module(kernel: Kernel) -> None:
    surface = TracingSurface()
    state = surface.collect(kernel)
    assert state.counts["tracepoint_probes"] == len(state.records.tracepoint_probes)
    unowned = [p for p in state.records.tracepoint_probes if p.callback_kind == "no-module"]
    assert unowned == []
    kinds = {f.technique for f in surface.assess(state)}
    assert "tracepoint-probe-unowned-code" not in kinds


def test_a_program_called_hidden_is_one_bpf2_cannot_open_by_id(kernel: Kernel) -> None:
    """On these VMs an agent outside our view runs BPF programs on tracepoints that bpf(2)
    does not list; each one the surface calls hidden, bpf(2) cannot open by its id either (a
    machine without any checks nothing)."""
    surface = TracingSurface()
    state = surface.collect(kernel)
    hidden = [f for f in surface.assess(state) if f.technique == "tracepoint-probe-hidden-bpf"]
    for found in hidden:
        assert found.severity == Severity.CRITICAL
        ids = found.evidence["unlisted_ids"]
        assert isinstance(ids, list) and ids
        for prog_id in ids:
            with pytest.raises(BpfError):
                os.close(bpf.fd_by_id(bpf.BPF_PROG_GET_FD_BY_ID, int(prog_id), "GET_FD_BY_ID"))
