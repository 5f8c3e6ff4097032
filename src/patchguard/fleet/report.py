"""What `patchguard report` sends: the findings of a scan and, when the host has a baseline,
of a check, made to fit the server's bounds (long texts shortened, the worst findings kept)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.findings import Finding

MAX_TEXT = 4000  # below the server's 4096
MAX_FINDINGS = 1000
MAX_EVIDENCE = 16 * 1024


@dataclass(frozen=True)
class Collected:
    findings: list[dict[str, Any]]
    gaps: int
    boot_id: str
    notes: tuple[str, ...]  # what could not be done ("no baseline at ...: check skipped")


def _short(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit(finding: Finding) -> dict[str, Any]:
    from patchguard.policy.chain import canonical
    from patchguard.report import finding_json

    out = finding_json(finding)
    for name, limit in (("surface", 64), ("technique", 128), ("disposition", 32)):
        out[name] = _short(str(out[name]), limit)
    out["subject"], out["summary"] = _short(out["subject"]), _short(out["summary"])
    if out.get("attack_id") is not None:
        out["attack_id"] = _short(str(out["attack_id"]), 32)
    if len(canonical(out["evidence"])) > MAX_EVIDENCE:
        out["evidence"] = {"truncated": True}
    return out


def worst_first(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: f.severity, reverse=True)[:MAX_FINDINGS]


def collect(baseline: Path, key_path: Path, ledger: Path) -> Collected:
    """Scan every surface, and check against the baseline if there is one (in process: the
    functions `patchguard scan` and `patchguard check` call)."""
    from patchguard.guard.config import ConfigError
    from patchguard.guard.witnessed import scan_policy
    from patchguard.integrity.check import run_check
    from patchguard.kernel import Kernel
    from patchguard.scan import run_scan
    from patchguard.signing import HostKey
    from patchguard.surfaces import all_surfaces

    try:  # gated as the guard gates, if its config has a [transparency] table
        policy, why_not, surfaces = scan_policy(ledger, None, all_surfaces())
    except ConfigError as exc:
        from patchguard.fleet.client import FleetError

        raise FleetError(str(exc)) from None
    notes = [why_not] if why_not else []
    kernel = Kernel()
    try:
        scan = run_scan(kernel, surfaces, policy=policy)
        findings, gaps = list(scan.findings), len(scan.gaps)
        if baseline.exists():
            checked = run_check(kernel, baseline, HostKey.load(key_path).public_key_bytes())
            findings += checked.findings
            gaps += len(checked.gaps)
        else:
            notes.append(f"no baseline at {baseline}: check skipped")
        boot_id = scan.boot_id
    finally:
        kernel.close()
    return Collected([fit(f) for f in worst_first(findings)], gaps, boot_id, tuple(notes))
