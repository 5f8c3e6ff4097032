"""What a baseline records of its modules (integrity/module_records.py): where each struct
module was and struct module's layout, read back as capture writes them, and anything else in
their place left out (live_modules then looks modules up in kallsyms and derives the layout from
BTF, as without the records). What a check does with them on a kernel with modules is proven in
the lab: tests/lab/test_lab_check_structs.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from patchguard.integrity.baseline import BaselineMeta
from patchguard.integrity.module_records import (
    MODULE_LAYOUT,
    MODULE_STRUCTS,
    known_structs,
    module_summary,
    recorded_layout,
)
from patchguard.integrity.store import Manifest, SitesEntry
from patchguard.kernel.module_layout import Layout

META = BaselineMeta("boot", "6.1.0", 0, "2026-12-07T00:00:00+00:00", "host", "ebpf", "0")


def manifest(summary: dict[str, object]) -> Manifest:
    return Manifest(Path("baseline.zip"), META, {}, SitesEntry(0, "0" * 64), summary, "f" * 16)


def test_structs_read_back_as_capture_writes_them() -> None:
    summary: dict[str, object] = {
        MODULE_STRUCTS: {
            "ext4": ["0xffffffffc0a00000", "0xffffffffc0a5f080"],
            "virtio_blk": ["0xffffffffc0010000", "0xffffffffc0013340"],
        }
    }
    assert known_structs(manifest(summary)) == {
        "ext4": (0xFFFFFFFFC0A00000, 0xFFFFFFFFC0A5F080),
        "virtio_blk": (0xFFFFFFFFC0010000, 0xFFFFFFFFC0013340),
    }


@pytest.mark.parametrize(
    "entry",
    [
        ["0xffffffffc0a00000"],
        ["0xffffffffc0a00000", "0xffffffffc0a5f080", "0x1"],
        "0xffffffffc0a00000",
        ["0xffffffffc0a00000", 18446744072645849216],
        ["0xffffffffc0a00000", "not hex"],
        None,
    ],
)
def test_an_entry_that_does_not_parse_is_left_out(entry: object) -> None:
    summary: dict[str, object] = {
        MODULE_STRUCTS: {"bad": entry, "good": ["0x10", "0x20"]},
    }
    assert known_structs(manifest(summary)) == {"good": (0x10, 0x20)}


@pytest.mark.parametrize("summary", [{}, {MODULE_STRUCTS: []}, {MODULE_STRUCTS: "x"}])
def test_a_baseline_without_structs_gives_none(summary: dict[str, object]) -> None:
    assert known_structs(manifest(summary)) == {}


LAYOUT = Layout(24, 320, 332, 840, 848, None, None)  # 6.1's offsets, no static calls


def test_what_capture_writes_reads_back() -> None:
    structs = {"ext4": (0xFFFFFFFFC0A00000, 0xFFFFFFFFC0A5F080)}
    summary = module_summary(structs, LAYOUT)
    back = manifest(summary)
    assert known_structs(back) == structs and recorded_layout(back) == LAYOUT


def test_no_live_module_writes_nothing() -> None:
    assert module_summary({}, LAYOUT) == {} and module_summary({"a": (1, 2)}, None) == {}
    assert recorded_layout(manifest({})) is None


@pytest.mark.parametrize(
    "change",
    [
        {"name": None},  # the struct's name offset is always there
        {"text_base": -8},
        {"text_size": 1 << 20},
        {"jump_entries": "840"},
        {"num_jump_entries": True},
        {"extra": 1},
    ],
)
def test_a_layout_that_does_not_parse_is_none(change: dict[str, object]) -> None:
    raw = {**dataclasses.asdict(LAYOUT), **change}
    assert recorded_layout(manifest({MODULE_LAYOUT: raw})) is None


def test_a_layout_missing_a_field_is_none() -> None:
    raw = dataclasses.asdict(LAYOUT)
    del raw["num_static_call_sites"]
    assert recorded_layout(manifest({MODULE_LAYOUT: raw})) is None
