"""The one interface every surface implements (scan and integrity know surfaces only through
it), and the one helper that builds their findings from the technique catalogue."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from patchguard.findings import Disposition, Evidence, Finding, Gap, Severity
from patchguard.techniques import TECHNIQUES

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


class Default(enum.Enum):
    """Take the value from the technique catalogue (techniques.py)."""

    CATALOGUE = "catalogue"


def finding(
    surface: str,
    technique: str,
    subject: str,
    summary: str,
    evidence: Evidence,
    *,
    severity: Severity | Default = Default.CATALOGUE,
    disposition: Disposition = Disposition.SUSPICIOUS,
    attack_id: str | Default | None = Default.CATALOGUE,
) -> Finding:
    """A finding of a catalogued technique: its severity and ATT&CK id are the catalogue's
    unless the evidence calls for others (a kprobe on commit_creds is graver than most)."""
    known = TECHNIQUES[technique]
    return Finding(
        surface=surface,
        technique=technique,
        severity=known.severity if isinstance(severity, Default) else severity,
        subject=subject,
        summary=summary,
        disposition=disposition,
        attack_id=known.attack_id if isinstance(attack_id, Default) else attack_id,
        evidence=evidence,
    )


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
