"""The tracing surface: collect from tracefs and kernel memory, assess without a baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchguard.findings import Finding
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.reading import Reading

if TYPE_CHECKING:
    from patchguard.kernel import Kernel
from patchguard.kernel.livepatch import read_livepatches
from patchguard.surfaces.tracing.assess import assess_records
from patchguard.surfaces.tracing.collect import (
    _collect_events,
    _collect_ftrace,
    _collect_kprobes,
    _counts,
    _tracefs,
)
from patchguard.surfaces.tracing.ops import collect_ops, ops_findings
from patchguard.surfaces.tracing.paths import NAME
from patchguard.surfaces.tracing.probes import collect_probes, probe_counts, probe_findings
from patchguard.surfaces.tracing.records import TracingRecords


class TracingSurface:
    name = NAME
    title = "ftrace, kprobes and trace events"

    def collect(self, kernel: Kernel) -> SurfaceState[TracingRecords]:
        r = Reading(NAME, kernel)
        tracefs = _tracefs(r)
        if tracefs is not None:
            _collect_ftrace(r, tracefs)
            _collect_events(r, tracefs)
        _collect_kprobes(r)
        collect_ops(r)
        collect_probes(r, tracefs)
        r.records.extend(read_livepatches(kernel))
        records = TracingRecords.of(r.records)
        counts = {
            **_counts(records, r.files_read),
            "ftrace_ops": len(records.ops),
            **probe_counts(records),
        }
        return SurfaceState(NAME, records, counts, tuple(r.gaps))

    def assess(self, state: SurfaceState[TracingRecords]) -> list[Finding]:
        records = state.records
        return assess_records(records) + ops_findings(records) + probe_findings(records)
