"""Where a baseline says each module's struct module was (check.known_structs): read back as
capture writes it, and anything else in its place left out (live_modules then looks the module
up in kallsyms, as without the record). What a check does with them on a kernel with modules
is proven in the lab: tests/lab/test_lab_check_structs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchguard.integrity.baseline import BaselineMeta
from patchguard.integrity.check import MODULE_STRUCTS, known_structs
from patchguard.integrity.store import Manifest, SitesEntry

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
