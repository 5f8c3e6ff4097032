"""RecordSet: a surface's records by kind, gathered from the order collect() read them in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from patchguard.findings import Gap
from patchguard.surfaces.base import RecordSet, Status, SurfaceState


@dataclass(frozen=True)
class Hook:
    name: str


@dataclass(frozen=True)
class Views:
    read: bool


@dataclass(frozen=True)
class Records(RecordSet):
    hooks: tuple[Hook, ...] = ()
    views: Views | None = None


def test_records_go_to_the_field_of_their_kind_and_iterate_field_by_field() -> None:
    records = Records.of([Hook("a"), Views(True), Hook("b")])
    assert records.hooks == (Hook("a"), Hook("b")) and records.views == Views(True)
    assert list(records) == [Hook("a"), Hook("b"), Views(True)]
    assert records and not Records()


def test_a_kind_the_set_does_not_declare_is_refused() -> None:
    with pytest.raises(TypeError, match="Records has no field for a str"):
        Records.of([Hook("a"), "stray"])


def test_two_records_for_a_field_of_one_are_refused() -> None:
    with pytest.raises(TypeError, match="2 records where the set holds one"):
        Records.of([Views(True), Views(False)])


def test_status_counts_records_of_a_set() -> None:
    gaps = [Gap("x", "hooks", "EPERM")]
    assert SurfaceState("x", Records(), gaps=gaps).status is Status.UNAVAILABLE
    partial = SurfaceState("x", Records.of([Hook("a")]), gaps=gaps)
    assert partial.status is Status.PARTIAL
