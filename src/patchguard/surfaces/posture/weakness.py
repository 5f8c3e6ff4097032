"""Every posture finding is a weakness: a setting that makes the kernel easier to patch."""

from __future__ import annotations

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.surfaces.posture.paths import SURFACE


def weakness(
    technique: str,
    severity: Severity,
    subject: str,
    summary: str,
    evidence: Evidence,
    attack_id: str | None = None,
) -> Finding:
    return Finding(
        surface=SURFACE,
        technique=technique,
        severity=severity,
        subject=subject,
        summary=summary,
        disposition=Disposition.WEAKNESS,
        attack_id=attack_id,
        evidence=evidence,
    )
