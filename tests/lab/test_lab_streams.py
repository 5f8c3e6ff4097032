"""The table that splits the lab suite into two streams of guests (tests/lab/lab_streams.py)
names tests and files that exist (a renamed test would silently fall back to its file's unit:
both live suites, ten minutes, in one stream), and the split covers every unit once. No boot."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_streams import HOST_SECONDS, SHARED_BOOT, UNIT_SECONDS, seconds, selected, streams

HERE = Path(__file__).resolve().parent


def test_every_unit_in_the_table_is_a_lab_test_or_file() -> None:
    for unit in UNIT_SECONDS:
        file, _, test = unit.partition("::")
        assert (HERE / file).is_file(), f"{unit}: no such file in tests/lab"
        function = test.split("[")[0]
        assert not test or f"def {function}(" in (HERE / file).read_text(), f"{unit}: no test"
    for file, shared in SHARED_BOOT.items():
        assert (HERE / file).is_file() and (HERE / shared).is_file(), (file, shared)


def test_the_streams_end_within_the_longest_but_one_unit() -> None:
    split = streams(list(UNIT_SECONDS))
    assert set(split) == set(UNIT_SECONDS) and set(split.values()) == {"first", "second"}
    ends = {"first": 0, "second": HOST_SECONDS}
    for unit, stream in split.items():
        ends[stream] += seconds(unit)
    assert abs(ends["first"] - ends["second"]) <= sorted(UNIT_SECONDS.values())[-2], ends


def test_a_stream_not_named_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHGUARD_LAB_STREAM", "third")
    with pytest.raises(ValueError, match="not one of first, second"):
        selected()
    monkeypatch.setenv("PATCHGUARD_LAB_STREAM", "second")
    assert selected() == "second"
