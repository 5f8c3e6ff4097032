"""Taint cleared in the lab guest (tests/lab/modules/pg_taint_clear.c): after two unsigned
out-of-tree modules loaded, tainted_mask is set to 0, so /proc/sys/kernel/tainted says the
kernel is clean. The modules' own struct module still carries O and E: `scan` says the taint
flags were cleared, critical. And a report with every "taint" line dropped on its way out is
told from the one patchguard wrote (verify-report)."""

from __future__ import annotations

import pytest
from support.lab_guest import Results, findings, one
from truth_guest import results

pytestmark = pytest.mark.lab

OE = 1 << 12 | 1 << 13


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return results(tmp_path_factory)


def test_the_taint_is_cleared(guest: Results) -> None:
    assert guest["insmod_taint_clear"]["rc"] == 0, guest["insmod_taint_clear"]["stderr"]
    assert guest["taint_before_clear"] & OE == OE
    assert int(guest["taint_clear_params"]["was"]) & OE == OE
    assert guest["taint_after_clear"] == 0


def test_scan_says_the_taint_flags_were_cleared(guest: Results) -> None:
    found = one(guest, "scan_taint", technique="taint-flags-cleared")
    assert found["severity"] == "critical" and found["disposition"] == "tampering"
    assert found["evidence"]["global_taint"] == 0
    assert "O" in found["evidence"]["missing"] and "E" in found["evidence"]["missing"]
    assert "in kernel memory" in found["evidence"]["global_source"]
    assert any(m.startswith("pg_taint_clear OE") for m in found["evidence"]["modules"])
    assert any("(struct module)" in m for m in found["evidence"]["modules"])
    # memory and /proc/sys/kernel/tainted agree (both 0): no view lies here
    assert findings(guest, "scan_taint", technique="filtered-view") == []


def test_a_report_with_taint_lines_dropped_is_told_apart(guest: Results) -> None:
    sealed = guest["sealed"]
    assert sealed["intact"]["rc"] == 0, sealed["intact"]
    assert (
        "intact" in sealed["intact"]["stdout"]
        and "signed by host key" in sealed["intact"]["stdout"]
    )
    assert sealed["filtered"]["rc"] == 1 and "altered" in sealed["filtered"]["stdout"]
