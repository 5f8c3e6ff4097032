"""The guard's sweeps read /proc/modules through one descriptor kept open
(integrity/keyed_pages.py: _read_whole): all of the file from offset 0 each time, bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchguard.integrity import keyed_pages
from patchguard.integrity.keyed_pages import _read_whole
from patchguard.kernel.errors import KernelAccessError


def test_reads_all_of_a_file_bigger_than_one_read_from_the_start_each_time(tmp_path: Path) -> None:
    path = tmp_path / "modules"
    path.write_bytes(os.urandom(200_000))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_whole(fd) == path.read_bytes()
        path.write_bytes(b"other text\n")  # rewritten in place: the same descriptor sees it
        assert _read_whole(fd) == b"other text\n"
    finally:
        os.close(fd)


def test_a_file_over_the_limit_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyed_pages, "LISTING_LIMIT", 100_000)
    path = tmp_path / "modules"
    path.write_bytes(b"x" * 200_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(KernelAccessError, match="more than 100000 bytes"):
            _read_whole(fd)
    finally:
        os.close(fd)
