"""How a sweep packs its regions into BPF runs (integrity/keyed_pages.py): every page once, in
order, no run over CHUNK_PAGES pages or RANGES ranges."""

from __future__ import annotations

from patchguard.integrity.keyed_pages import Swept, _batches
from patchguard.kernel.bpf.text_hash import CHUNK_PAGES, PAGE, RANGES


def regions(*sizes: int) -> list[Swept]:
    return [Swept(i << 32, b"", size) for i, size in enumerate(sizes)]


def pages_in_order(swept: list[Swept]) -> list[tuple[int, int]]:
    batches = list(_batches(swept))
    assert all(sum(p.pages for p in b) <= CHUNK_PAGES and len(b) <= RANGES for b in batches)
    return [(p.region, p.first + i) for b in batches for p in b for i in range(p.pages)]


def test_small_regions_share_a_run_and_a_big_one_continues_in_the_next() -> None:
    swept = regions(PAGE, 300 * PAGE, 100, 2 * PAGE + 1)
    batches = list(_batches(swept))
    assert [[(p.region, p.first, p.pages) for p in b] for b in batches] == [
        [(0, 0, 1), (1, 0, 255)],
        [(1, 255, 45), (2, 0, 1), (3, 0, 3)],
    ]
    expected = [(r, page) for r, n in enumerate((1, 300, 1, 3)) for page in range(n)]
    assert pages_in_order(swept) == expected


def test_a_run_holds_at_most_ranges_ranges() -> None:
    swept = regions(*[8] * (RANGES + 3))
    assert [len(b) for b in _batches(swept)] == [RANGES, 3]
    assert pages_in_order(swept) == [(r, 0) for r in range(RANGES + 3)]


def test_full_runs_end_exactly_and_empty_regions_take_no_room() -> None:
    swept = regions(CHUNK_PAGES * PAGE, 0, CHUNK_PAGES * PAGE)
    assert [[(p.region, p.pages) for p in b] for b in _batches(swept)] == [[(0, 256)], [(2, 256)]]
