"""What `patchguard report` sends: the findings of a scan and, when the host has a baseline,
of a check, made to fit the server's bounds (long texts shortened, the worst findings kept);
or, with `--scan-json FILE`, a sealed `patchguard scan --json` document carried whole, with
the findings it lists, for the server to check its seal against the host's enrolled key."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.findings import Finding

MAX_TEXT = 4000  # below the server's 4096
MAX_FINDINGS = 1000
MAX_EVIDENCE = 16 * 1024
SEVERITIES = ("info", "low", "medium", "high", "critical")
MAX_SCAN = 512 * 1024  # the server's bound on a carried scan document
_FINDING_TEXT = ("surface", "technique", "severity", "subject", "summary", "disposition")


@dataclass(frozen=True)
class Collected:
    findings: list[dict[str, Any]]
    gaps: int
    boot_id: str | None
    notes: tuple[str, ...]  # what could not be done ("no baseline at ...: check skipped")
    scan: str | None = None  # a sealed scan document's text, carried whole


def _short(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit(finding: Finding) -> dict[str, Any]:
    from patchguard.report import finding_json

    return fit_json(finding_json(finding))


def fit_json(out: dict[str, Any]) -> dict[str, Any]:
    """A finding as `report.finding_json` shapes it, within the server's bounds."""
    from patchguard.policy.chain import canonical

    for name, limit in (("surface", 64), ("technique", 128), ("disposition", 32)):
        out[name] = _short(str(out[name]), limit)
    out["subject"], out["summary"] = _short(out["subject"]), _short(out["summary"])
    if out.get("attack_id") is not None:
        out["attack_id"] = _short(str(out["attack_id"]), 32)
    evidence = canonical(out["evidence"])
    if len(evidence) > MAX_EVIDENCE or "\\u0000" in evidence:
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


def _finding_of(item: object) -> dict[str, Any] | None:
    """A scan document's finding in the shape the server takes, or None if it is not one."""
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in _FINDING_TEXT):
        return None
    if item["severity"] not in SEVERITIES or any("\x00" in item[k] for k in _FINDING_TEXT):
        return None  # the server refuses NUL in text: one bad finding must not sink the report
    evidence = item.get("evidence")
    attack = item.get("attack_id")
    return fit_json(
        {
            **{k: item[k] for k in _FINDING_TEXT},
            "attack_id": attack if isinstance(attack, str) else None,
            "evidence": evidence if isinstance(evidence, dict) else {},
        }
    )


def from_scan(source: str, raw: bytes) -> Collected:
    """What to send for a sealed scan document read from `source`: the document's text as it
    was read (the server judges its seal) and the findings it lists. A document that no
    longer parses is still sent, with no findings: that it was altered is the news."""
    from patchguard.fleet.client import FleetError

    if len(raw) > MAX_SCAN:
        raise FleetError(
            f"{source}: {len(raw)} bytes, more than {MAX_SCAN} (scan without --records)"
        )
    # Bytes that are not UTF-8 become U+FFFD: a sealed document is ASCII, so the server
    # finds it altered either way, and the message stays valid JSON text.
    text = raw.decode("utf-8", "replace")
    notes: list[str] = []
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        doc = None
        notes.append(f"{source}: not JSON ({exc}); sent for the server to judge")
    if not isinstance(doc, dict):
        return Collected([], 0, None, tuple(notes), text)
    listed = doc.get("findings")
    if not isinstance(listed, list):
        listed = []
    found = [f for f in (_finding_of(item) for item in listed) if f is not None]
    if len(found) < len(listed):
        notes.append(f"{source}: {len(listed) - len(found)} entries are not findings; left out")
    found.sort(key=lambda f: SEVERITIES.index(f["severity"]), reverse=True)
    unavailable = doc.get("unavailable")
    gaps = len(unavailable) if isinstance(unavailable, list) else 0
    boot_id = doc.get("boot_id")
    boot_id = boot_id if isinstance(boot_id, str) and len(boot_id) <= 64 else None
    return Collected(found[:MAX_FINDINGS], gaps, boot_id, tuple(notes), text)
