"""check's second look (integrity/check.settled): code judged as tampering is read and judged
once more before it is reported, so a patch caught in flight is not called an attack."""

from __future__ import annotations

from patchguard.findings import Disposition, Finding, Severity
from patchguard.integrity.check import settled


def finding(disposition: Disposition) -> Finding:
    return Finding(
        "kernel_text",
        "inline-hook",
        Severity.CRITICAL if disposition == Disposition.TAMPERING else Severity.INFO,
        "jump label at __schedule+0x4a",
        "holds INT3, not a JMP or NOP",
        disposition,
        evidence={"address": "0xffffffff81000000"},
    )


def test_nothing_tampered_is_not_looked_at_again() -> None:
    first = [finding(Disposition.EXPLAINED)]
    assert settled(first, lambda: [finding(Disposition.TAMPERING)]) is first


def test_a_patch_in_flight_is_judged_by_the_second_look() -> None:
    explained = [finding(Disposition.EXPLAINED)]
    assert settled([finding(Disposition.TAMPERING)], lambda: explained) == explained


def test_tampering_that_holds_says_so() -> None:
    (held,) = settled([finding(Disposition.TAMPERING)], lambda: [finding(Disposition.TAMPERING)])
    assert held.disposition == Disposition.TAMPERING
    assert held.evidence == {"address": "0xffffffff81000000", "second_look": "held"}
