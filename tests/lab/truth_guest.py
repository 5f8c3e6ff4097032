"""One lab boot shared by the tests of rootkits that lie to the views (test_lab_khook.py,
test_lab_taint_cleared.py): truth_checks.py runs once per test session."""

from __future__ import annotations

import pytest
from support.lab_guest import Results, run_script

MODULES = ("pg_khook", "pg_taint_clear")
_RESULTS: list[Results] = []


def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    if not _RESULTS:
        _RESULTS.append(run_script(tmp_path_factory.mktemp("truth"), "truth_checks.py", MODULES))
    return _RESULTS[0]
