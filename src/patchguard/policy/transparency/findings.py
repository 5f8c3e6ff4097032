"""A split view as the finding a host raises: critical, with both signed notes as evidence.

Two checkpoints signed by the log's own key that cannot both be true prove the operator lied;
the finding carries them exactly as received (UTF-8 text, already checked to be a note), so
whoever reads the alert can verify the proof with any signed-note tool.
"""

from __future__ import annotations

from patchguard.findings import Disposition, Finding, Severity
from patchguard.policy.transparency.checkpoint import SplitView
from patchguard.policy.transparency.note import parse


def split_view_finding(split: SplitView) -> Finding:
    origin = parse(split.first).text.split("\n", 1)[0]
    return Finding(
        surface="ledger",
        technique="ledger-split-view",
        severity=Severity.CRITICAL,
        subject=f"exception ledger {origin}",
        summary=f"the ledger's log signed two histories that cannot both be true: {split.reason}",
        disposition=Disposition.TAMPERING,
        evidence={
            "origin": origin,
            "reason": split.reason,
            "checkpoint_seen": split.first.decode("utf-8"),
            "checkpoint_now": split.second.decode("utf-8"),
        },
    )
