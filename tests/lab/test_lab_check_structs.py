"""A check finds each module's struct module where its baseline (of the same boot) recorded it,
read with the struct's layout the baseline recorded: in the lab guest, with Debian's modules
loaded, a check reads neither /proc/kallsyms nor vmlinux's BTF, and the same baseline signed
again without those records makes it read both (so the observation can fail) and say the same.
One boot, tests/lab/guest_check_structs.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.lab_guest import Results, run_script

pytestmark = pytest.mark.lab

KALLSYMS, BTF = "/proc/kallsyms", "/sys/kernel/btf/vmlinux"


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
    assert guest["module_layout"]["name"] is not None, guest["module_layout"]


def test_a_check_finds_the_modules_without_kallsyms_or_btf(guest: Results) -> None:
    run = guest["with_structs"]
    counts = clean(run)
    assert counts["modules"] == len(guest["module_structs"]), counts
    assert KALLSYMS not in run["opened"] and run["forks"] == 0, run["opened"]
    assert BTF not in run["opened"] and not guest["btf_parser_imported"], run["opened"]


def test_without_the_records_the_check_reads_both_and_says_the_same(guest: Results) -> None:
    before, after = guest["with_structs"], guest["without_structs"]
    assert clean(after)["modules"] == clean(before)["modules"]
    assert KALLSYMS in after["opened"] or after["forks"] > 0, after["opened"]
    assert BTF in after["opened"], after["opened"]
