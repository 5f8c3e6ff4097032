"""A check finds each module's struct module where its baseline (of the same boot) recorded it,
and reads /proc/kallsyms only for a module it cannot find that way: in the lab guest, with
Debian's modules loaded, a check reads no kallsyms at all, and the same baseline signed again
without those records makes it read kallsyms (so the observation can fail). One boot,
tests/lab/guest_check_structs.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.lab_guest import Results, run_script

pytestmark = pytest.mark.lab

KALLSYMS = "/proc/kallsyms"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    results: Path = tmp_path_factory.mktemp("check-structs")
    return run_script(results, "guest_check_structs.py", (), timeout=900)


def clean(run: dict[str, Any]) -> dict[str, int]:
    """The check's kernel_text counts, after asserting it found nothing above info."""
    assert run["rc"] == 0, run["report"]["findings"]
    counts: dict[str, int] = run["report"]["surfaces"][0]["counts"]
    assert counts["tampering"] == 0, run["report"]["findings"]
    return counts


def test_the_baseline_records_where_each_module_struct_was(guest: Results) -> None:
    assert guest["baseline"]["rc"] == 0, guest["baseline"]["stderr"]
    structs = guest["module_structs"]
    assert len(structs) > 5, structs  # the guest boots with Debian's modules loaded
    for name, (at, struct) in structs.items():
        assert int(at, 16) > 0 and int(struct, 16) > 0, name


def test_a_check_finds_the_modules_without_reading_kallsyms(guest: Results) -> None:
    run = guest["with_structs"]
    counts = clean(run)
    assert counts["modules"] == len(guest["module_structs"]), counts
    assert KALLSYMS not in run["opened"] and run["forks"] == 0, run["opened"]


def test_without_the_records_the_check_reads_kallsyms_and_says_the_same(guest: Results) -> None:
    before, after = guest["with_structs"], guest["without_structs"]
    assert clean(after)["modules"] == clean(before)["modules"]
    assert KALLSYMS in after["opened"] or after["forks"] > 0, after["opened"]
