"""What the guard remembers from its start so that blinding it shows: the baseline it was
given (by digest), and which surfaces it could read.

A baseline re-created while the guard runs verifies as well as the old one when the attacker
holds the host key; what gives it away is that it is not the file the guard started with. A
surface that could be read and then cannot (a reader unloaded, a file system unmounted, a
lock held) is someone taking an eye away, which is a finding, not a reason to exit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from patchguard.findings import Disposition, Finding, Severity
from patchguard.safe_read import InputError, open_regular
from patchguard.surfaces.base import Status


def baseline_digest(path: Path) -> str:
    """SHA-256 of the baseline file, or a one-line reason it has none (missing, not a file)."""
    try:
        digest = hashlib.sha256()
        with open_regular(path, "baseline") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except InputError as exc:
        return f"unreadable: {exc.reason}"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


@dataclass
class BaselinePin:
    """The baseline's digest when the guard started (or was last reloaded: SIGHUP is how an
    operator says a new baseline is meant)."""

    path: Path
    digest: str

    @classmethod
    def take(cls, path: Path) -> BaselinePin:
        return cls(path, baseline_digest(path))

    def check(self) -> list[Finding]:
        now = baseline_digest(self.path)
        if now == self.digest:
            return []
        return [
            Finding(
                "guard",
                "baseline-replaced",
                Severity.CRITICAL,
                str(self.path),
                "the baseline is not the file the guard started with (a new baseline needs a "
                "reload: systemctl reload patchguard-guard)",
                Disposition.TAMPERING,
                "T1565.001",
                {"path": str(self.path), "pinned": self.digest, "now": now},
            )
        ]


@dataclass
class SurfaceWatch:
    """Surfaces seen readable; one of them unavailable later is a `surface-lost` finding."""

    readable: set[str] = field(default_factory=set)

    def update(self, statuses: Iterable[tuple[str, Status, str]]) -> list[Finding]:
        """`statuses`: (surface, status, why) of one look; the findings of surfaces lost."""
        lost = []
        for name, status, why in statuses:
            if status is not Status.UNAVAILABLE:
                self.readable.add(name)
            elif name in self.readable:
                lost.append(surface_lost(name, why))
        return lost


def surface_lost(name: str, why: str) -> Finding:
    return Finding(
        "guard",
        "surface-lost",
        Severity.HIGH,
        name,
        f"surface {name} could be read when the guard started and cannot now: {why}",
        Disposition.SUSPICIOUS,
        "T1562.001",
        {"surface": name, "reason": why},
    )
