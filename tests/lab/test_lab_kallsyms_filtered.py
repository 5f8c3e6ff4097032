"""/proc/kallsyms filtered in the lab guest (tests/lab/modules/pg_kallsyms_filter.c): ended
early for processes named `cat`, then for every process. patchguard reads it itself (a forked
child of its own, never `cat`), so the first filter does not touch what it sees; the second
one it sees, and says which view lies: ftrace's records in kernel memory hold functions the
kernel still names that /proc/kallsyms, as patchguard read it, does not list."""

from __future__ import annotations

import pytest
from support.lab_guest import Results, findings, one, report
from truth_guest import results

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return results(tmp_path_factory)


def _kernel_text_counts(guest: Results, step: str) -> dict[str, int]:
    (surface,) = report(guest, step)["surfaces"]
    counts: dict[str, int] = surface["counts"]
    return counts


def test_the_filter_singles_out_cat(guest: Results) -> None:
    assert guest["insmod_filter_cat"]["rc"] == 0, guest["insmod_filter_cat"]["stderr"]
    lines = guest["kallsyms_lines_cat"]
    assert lines["cat"] < 5000 < 50000 < lines["python"], lines


def test_a_filter_on_cat_does_not_reach_patchguard(guest: Results) -> None:
    counts = _kernel_text_counts(guest, "scan_filter_cat")
    assert counts["ftrace_sites"] > 20000 and counts["ftrace_sites_unlisted"] == 0, counts
    assert findings(guest, "scan_filter_cat", technique="filtered-view") == []


def test_a_filter_on_every_process_is_a_view_that_lies(guest: Results) -> None:
    assert guest["insmod_filter_all"]["rc"] == 0, guest["insmod_filter_all"]["stderr"]
    lines = guest["kallsyms_lines_all"]
    assert lines["python"] < 5000 and int(guest["filter_params"]["cut"]) > 0, lines
    counts = _kernel_text_counts(guest, "scan_filter_all")
    assert counts["ftrace_sites_unlisted"] > 10000, counts
    lying = one(guest, "scan_filter_all", technique="filtered-view")
    assert lying["subject"] == "/proc/kallsyms" and lying["severity"] == "critical"
    assert lying["evidence"]["unlisted"] == counts["ftrace_sites_unlisted"]
    assert lying["evidence"]["kernel_names"], lying  # the kernel still names them
