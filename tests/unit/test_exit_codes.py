"""The exit code of scan and check: 1 only for findings; a scan that could read most surfaces
not at all is not clean (2), whatever it did not find."""

from __future__ import annotations

import pytest

from patchguard.cli import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, exit_code
from patchguard.findings import Disposition, Finding, Gap, Severity
from patchguard.scan import ScanReport, SurfaceResult
from patchguard.surfaces import all_surfaces
from patchguard.surfaces.base import SurfaceState


def report(unavailable: int, findings: list[Finding] | None = None) -> ScanReport:
    results = []
    for i, surface in enumerate(all_surfaces()[:6]):
        if i < unavailable:
            state = SurfaceState(surface.name, [], gaps=[Gap(surface.name, "x", "EPERM")])
        else:
            state = SurfaceState(surface.name, [object()])
        results.append(SurfaceResult(surface, state, (findings or []) if i == 5 else [], 0.0))
    return ScanReport("h", "6.1", "b", "2026-01-01T00:00:00+00:00", 0.1, None, results)


def test_clean_when_most_surfaces_were_read() -> None:
    assert exit_code(report(unavailable=3), Severity.HIGH) == EXIT_CLEAN


def test_not_clean_when_most_surfaces_were_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(report(unavailable=4), Severity.HIGH) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("patchguard: 4 of 6 surfaces could not be read") and err.count("\n") == 1


def test_findings_are_1_even_when_blind() -> None:
    finding = Finding("guard", "surface-lost", Severity.HIGH, "ebpf", "lost",
                      Disposition.SUSPICIOUS, None, {})  # fmt: skip
    assert exit_code(report(unavailable=5, findings=[finding]), Severity.HIGH) == EXIT_FINDINGS
