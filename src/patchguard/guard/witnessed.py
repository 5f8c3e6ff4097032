"""Where the guard config's `[transparency]` table meets the commands that apply exceptions:
`scan` (its `--config`, else the guard's config at the default path if there is one) and the
guard's sweeps and trigger looks. With the table, exceptions pass policy/transparency/gate.py
first; without it they apply as the ledger says (unwitnessed mode, as before the gate)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from patchguard.findings import Finding
from patchguard.guard.config import DEFAULT_PATH, GuardConfig, load_config
from patchguard.policy.ledger import LedgerError
from patchguard.policy.match import exceptions_policy, ledger_policy
from patchguard.policy.transparency.gate import GateSurface, cached_gate, gate
from patchguard.policy.transparency.gate_config import GateSettings
from patchguard.scan import Policy
from patchguard.surfaces.base import Surface


def witnessed_policy(
    ledger: Path, settings: GateSettings, fresh: bool = False
) -> tuple[Policy | None, str | None, list[Finding]]:
    """(policy of the witnessed exceptions, a note or None, the gate's findings); `fresh`:
    ask anew (a one-shot scan), else reuse a recent answer (the guard's many looks)."""
    if not ledger.exists():  # no ledger: nothing to apply, nothing to gate
        return None, None, []
    try:
        gated = gate(ledger, settings) if fresh else cached_gate(ledger, settings)
    except LedgerError as exc:
        return None, f"the exception ledger grants nothing: {exc}", []
    note = "; ".join(gated.notes) or None
    return exceptions_policy(gated.applied, lapsed=gated.lapsed), note, list(gated.findings)


def settings_for_scan(config: Path | None) -> GateSettings | None:
    """The `[transparency]` table of the config given, else of the guard's config if one is
    at the default path (a host's scan gates exceptions as its guard does)."""
    path = config or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    return load_config(path).transparency if path is not None else None


def scan_policy(
    ledger: Path, config: Path | None, surfaces: Sequence[Surface]
) -> tuple[Policy | None, str | None, list[Surface]]:
    """`patchguard scan`'s policy, note and surfaces (the gate's own added when it gates)."""
    settings = settings_for_scan(config)
    if settings is None:
        policy, why_not = ledger_policy(ledger)
        return policy, why_not, list(surfaces)
    policy, why_not, found = witnessed_policy(ledger, settings, fresh=True)
    if policy is None:  # the ledger does not verify: nothing to gate
        return None, why_not, list(surfaces)
    return policy, why_not, [*surfaces, GateSurface(tuple(found))]


def guard_policy(config: GuardConfig) -> tuple[Policy | None, str | None, list[Finding]]:
    """The guard's policy for a look, its note, and the gate's findings (none ungated)."""
    if config.ledger is None:
        return None, None, []
    if config.transparency is None:
        return (*ledger_policy(config.ledger), [])
    return witnessed_policy(config.ledger, config.transparency)
