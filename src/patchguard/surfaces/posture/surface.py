"""The posture surface: collect() reads the records, assess() judges them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchguard.findings import Finding, Severity
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.posture.assess import assess_records
from patchguard.surfaces.posture.collect import read_posture
from patchguard.surfaces.posture.paths import NAME
from patchguard.surfaces.posture.records import PostureRecords

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


class PostureSurface:
    name = NAME
    title = "Security posture"

    def collect(self, kernel: Kernel) -> SurfaceState[PostureRecords]:
        records, gaps = read_posture(kernel)
        weak = sum(1 for f in assess_records(records) if f.severity >= Severity.LOW)
        counts = {"settings": len(records), "weak": weak}
        return SurfaceState(NAME, records, counts, tuple(gaps))

    def assess(self, state: SurfaceState[PostureRecords]) -> list[Finding]:
        return assess_records(state.records)
