"""Exceptions for the kernel's own module taint flags (the posture surface's `taint E`,
`taint O`, ...): such a flag says that some module did it, not which. It is the sanctioned
module's, and allowed by its exception, while every loaded module that shows the letter in
/sys/module/<name>/taint is covered by a live exception whose [[module]] declares the letter
(and matches as the modules surface's findings are matched: policy/match_hooks.py). A letter no
loaded module shows (set by a module since unloaded, or by anything else) stays a finding, and
so does one that a module without an exception shows too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from patchguard.findings import Finding
from patchguard.policy.match_hooks import Signer, allowed_by, modinfo_signer, module_differences
from patchguard.policy.rules import Request

SYS_MODULE = Path("/sys/module")
MAX_MODULES = 65536  # far above any kernel's module count: a bound, not a limit in practice
# proprietary, forced, out of tree, unsigned, staging, and live patch (a livepatch module
# shows K in its own taint file)
MODULE_LETTERS = frozenset("PFOECK")


def module_taints(root: Path = SYS_MODULE) -> dict[str, set[str]]:
    """Each loaded module's own taint letters; built-in entries (no taint file) are left out."""
    found: dict[str, set[str]] = {}
    for count, entry in enumerate(root.iterdir() if root.is_dir() else ()):
        if count >= MAX_MODULES:
            break
        try:
            with (entry / "taint").open("rb") as f:
                letters = f.read(64).decode("ascii", errors="replace").strip()
        except OSError:
            continue
        if letters:
            found[entry.name] = set(letters)
    return found


def _covering(
    module: str, letter: str, live: Sequence[Request], signer: Signer, finding: Finding,
    taints: dict[str, set[str]],
) -> Request | None:  # fmt: skip
    for request in live:
        for declared in request.manifest.modules:
            ours = declared.name == module and letter in declared.taints
            if ours and not module_differences(finding, declared, signer, taints):
                return request
    return None


def apply_taint_exceptions(
    findings: Sequence[Finding],
    live: Sequence[Request],
    taints: dict[str, set[str]] | None = None,
    signer: Signer = modinfo_signer,
) -> list[Finding]:
    """The posture findings with each module taint flag that sanctioned modules alone show
    allowed by (the first of) their exceptions, naming the modules."""
    shown = module_taints() if taints is None else taints
    return [_taint_verdict(f, live, shown, signer) for f in findings]


def _taint_verdict(
    finding: Finding, live: Sequence[Request], taints: dict[str, set[str]], signer: Signer
) -> Finding:
    letter = finding.evidence.get("letter")
    if not finding.technique.startswith("taint-") or letter not in MODULE_LETTERS:
        return finding
    showing = sorted(name for name, letters in taints.items() if letter in letters)
    if not showing:
        return finding
    covering = [_covering(m, str(letter), live, signer, finding, taints) for m in showing]
    if any(request is None for request in covering):
        return finding
    first = covering[0]
    assert first is not None
    said = replace(
        finding,
        summary=f"{finding.summary} Shown by {', '.join(showing)} alone, as declared.",
        evidence={**finding.evidence, "modules": showing},
    )
    return allowed_by(said, first)


__all__ = ["apply_taint_exceptions", "module_taints"]
