"""What one look keeps (Kernel.per_look): one object per kind until the look ends."""

from __future__ import annotations

import threading
from pathlib import Path

from patchguard.kernel import Kernel
from patchguard.scan import run_scan


class _Found:
    def __init__(self) -> None:
        self.found: dict[int, int] = {}


class _Other:
    pass


def test_one_object_per_kind_within_a_look(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    first = kernel.per_look(_Found)
    first.found[1] = 2
    assert kernel.per_look(_Found) is first
    assert isinstance(kernel.per_look(_Other), _Other)
    assert kernel.per_look(_Found).found == {1: 2}


def test_a_new_look_starts_empty(tmp_path: Path) -> None:
    """end_look, refresh (the guard's next look) and close each drop what a look kept."""
    kernel = Kernel(tmp_path)
    for end in (kernel.end_look, kernel.refresh, kernel.close):
        kept = kernel.per_look(_Found)
        kept.found[1] = 2
        end()
        assert kernel.per_look(_Found) is not kept
        assert kernel.per_look(_Found).found == {}


def test_surfaces_in_parallel_share_one(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    start = threading.Barrier(8)
    got: list[_Found] = []

    def ask() -> None:
        start.wait()
        got.append(kernel.per_look(_Found))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(g is got[0] for g in got)


def test_every_scan_is_a_look_of_its_own(tmp_path: Path) -> None:
    """A handle kept across scans (a test's, a bench's) never serves an earlier scan's reads."""
    kernel = Kernel(tmp_path)
    kept = kernel.per_look(_Found)
    run_scan(kernel, [], read_ahead=False)
    assert kernel.per_look(_Found) is not kept
