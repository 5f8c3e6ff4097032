"""The one interface every surface implements; the engine knows surfaces only through it."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from patchguard.findings import Finding, Gap

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


class Status(enum.StrEnum):
    OK = "ok"  # everything the surface covers was read
    PARTIAL = "partial"  # some parts were read, the gaps say what was not
    UNAVAILABLE = "unavailable"  # nothing could be read, the gaps say why


@dataclass(frozen=True)
class SurfaceState:
    """What one surface read from the kernel: typed records plus what it could not read."""

    surface: str
    records: Sequence[object]  # frozen dataclasses of the surface's own kinds
    counts: Mapping[str, int] = field(default_factory=dict)  # shown in the scan table
    gaps: Sequence[Gap] = ()

    @property
    def status(self) -> Status:
        if not self.gaps:
            return Status.OK
        return Status.PARTIAL if self.records or any(self.counts.values()) else Status.UNAVAILABLE


class Surface(Protocol):
    name: str
    title: str

    def collect(self, kernel: Kernel) -> SurfaceState:
        """Read the surface from the live kernel (or a captured tree); never raises on EPERM."""
        ...

    def assess(self, state: SurfaceState) -> list[Finding]:
        """Findings from the current state alone (no baseline): what `scan` reports."""
        ...
