"""One lab boot shared by the tests of rootkits that lie to the views (test_lab_khook.py,
test_lab_taint_cleared.py, test_lab_kallsyms_filtered.py): truth_checks.py runs once per test
session, and a boot that failed is not tried again by every test."""

from __future__ import annotations

import pytest
from support.lab_guest import Results, run_script

MODULES = ("pg_khook", "pg_taint_clear", "pg_kallsyms_filter")
_RESULTS: list[Results | BaseException] = []


def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    if not _RESULTS:
        try:
            found = run_script(
                tmp_path_factory.mktemp("truth"), "truth_checks.py", MODULES, kaslr=False
            )
        except BaseException as exc:  # pytest's fail/skip outcomes too: said once, kept
            _RESULTS.append(exc)
            raise
        _RESULTS.append(found)
    first = _RESULTS[0]
    if isinstance(first, BaseException):
        raise first
    return first
