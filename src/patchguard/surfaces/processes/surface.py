"""ProcessesSurface: collect the views, then assess what they disagree on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchguard.findings import Finding
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.processes.assess import assess_hidden, assess_records
from patchguard.surfaces.processes.collect import (
    ITER_WHAT,
    MEMORY_WHAT,
    NOT_LIVE_BPF,
    NOT_LIVE_MEMORY,
    NOT_LIVE_PROBE,
    PID_MAX,
    PID_TABLE_WHAT,
    PROBE_WHAT,
    ProcessReading,
    collect_listings,
    probe_live,
    summary,
)
from patchguard.surfaces.processes.records import NAME, ProcessRecords
from patchguard.surfaces.processes.views import parse_pid_max

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


def _counts(records: ProcessRecords) -> dict[str, int]:
    views = records.views
    techniques = [assess_hidden(h).technique for h in records.hidden]
    if views is None:
        return {}
    return {
        "processes": views.listed,
        "threads": views.tasks,
        "pids_probed": views.probed,
        "tasks_iterated": views.iterated or 0,
        "tasks_in_memory": views.in_memory or 0,
        "pids_in_pid_table": views.in_pid_table or 0,
        "strays": views.strays or 0,
        "hidden": techniques.count("hidden-process"),
        "iterator_skipped": techniques.count("iterator-skips-task"),
        "mismatched": len(techniques)
        - techniques.count("hidden-process")
        - techniques.count("iterator-skips-task"),
    }


class ProcessesSurface:
    name = NAME
    title = "Processes (cross-view, against kernel memory)"

    def __init__(self, probe_below: int | None = None) -> None:
        # Only for benchmarks: probe pids below this instead of below the kernel's pid_max.
        self.probe_below = probe_below

    def collect(self, kernel: Kernel) -> SurfaceState[ProcessRecords]:
        r = ProcessReading(NAME, kernel)
        pid_max = r.parsed("pid_max (/proc/sys/kernel/pid_max)", PID_MAX, parse_pid_max)
        pid_max = self.probe_below or pid_max
        suspects = rechecks = 0
        if collect_listings(r):
            if kernel.live:
                suspects, rechecks = probe_live(r, pid_max)
            else:
                r.gap(PROBE_WHAT, NOT_LIVE_PROBE)
                r.gap(ITER_WHAT, NOT_LIVE_BPF)
                r.gap(MEMORY_WHAT, NOT_LIVE_MEMORY)
                r.gap(PID_TABLE_WHAT, NOT_LIVE_MEMORY)
            r.records.insert(0, summary(r, pid_max, suspects, rechecks))
        records = ProcessRecords.of(r.records)
        return SurfaceState(NAME, records, _counts(records), tuple(r.gaps))

    def assess(self, state: SurfaceState[ProcessRecords]) -> list[Finding]:
        return assess_records(state.records)


__all__ = ["ProcessesSurface"]
