"""The tracing surface: collect from tracefs and kernel memory, assess without a baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from patchguard.findings import Finding
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.reading import Reading, records_of

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
from patchguard.surfaces.tracing.ops import OpsRecord, collect_ops, ops_findings
from patchguard.surfaces.tracing.paths import NAME


class TracingSurface:
    name = NAME
    title = "ftrace, kprobes and trace events"

    def collect(self, kernel: Kernel) -> SurfaceState[Sequence[object]]:
        r = Reading(NAME, kernel)
        tracefs = _tracefs(r)
        if tracefs is not None:
            _collect_ftrace(r, tracefs)
            _collect_events(r, tracefs)
        _collect_kprobes(r)
        collect_ops(r)
        r.records.extend(read_livepatches(kernel))
        counts = {**_counts(r), "ftrace_ops": len(records_of(r.records, OpsRecord))}
        return SurfaceState(NAME, tuple(r.records), counts, tuple(r.gaps))

    def assess(self, state: SurfaceState[Sequence[object]]) -> list[Finding]:
        return assess_records(state.records) + ops_findings(state.records)
