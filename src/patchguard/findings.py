"""The records every surface produces: findings with evidence, and gaps (what could not be read)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

# Evidence values stay JSON-shaped so that `scan --json` can print them as they are.
Evidence = Mapping[str, "str | int | bool | list[str] | list[int] | None"]


class Severity(enum.IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r} (one of: {names})") from None


class Disposition(enum.StrEnum):
    """What patchguard concluded about the subject of a finding.

    shared/DESIGN.md names tampering, explained, allowed and unavailable; a scan without a
    baseline also meets things that are not proven tampering: a hook that rootkits use
    (`suspicious`) and a setting that weakens protection (`weakness`).
    """

    TAMPERING = "tampering"
    SUSPICIOUS = "suspicious"
    WEAKNESS = "weakness"
    EXPLAINED = "explained"
    ALLOWED = "allowed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Finding:
    surface: str
    technique: str  # a name of the catalogue (techniques.py), e.g. "rootkit-helper"
    severity: Severity
    subject: str  # the thing: "prog 42 (kill_hook)", "sysctl kernel.kptr_restrict"
    summary: str  # one sentence: what was seen and why it matters
    disposition: Disposition = Disposition.SUSPICIOUS
    attack_id: str | None = None  # MITRE ATT&CK, where one fits (T1014 rootkit, ...)
    evidence: Evidence = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Imported here: the catalogue's records import Severity from this module.
        from patchguard.techniques import TECHNIQUES

        if self.technique not in TECHNIQUES:
            raise ValueError(f"technique {self.technique!r} is not in the catalogue")


@dataclass(frozen=True)
class Gap:
    """Something a surface could not read, and the plain reason (EPERM, lockdown, not built)."""

    surface: str
    what: str  # "ftrace enabled_functions"
    reason: str  # "permission denied by the kernel (EPERM) on /sys/kernel/tracing/..."
