"""How a sweep packs its regions into BPF runs (integrity/keyed_pages.py): every page once, in
order, no run over CHUNK_PAGES pages or RANGES ranges."""

from __future__ import annotations

import struct

from patchguard.integrity.keyed_pages import RECHECK_EVERY, Swept, _batches, _Plan
from patchguard.kernel.bpf.text_hash import CHUNK_PAGES, PAGE, RANGES

BIG = CHUNK_PAGES + 44  # pages: more than one run holds


def regions(*sizes: int) -> list[Swept]:
    return [Swept(i << 32, b"", size) for i, size in enumerate(sizes)]


def pages_in_order(swept: list[Swept]) -> list[tuple[int, int]]:
    batches = list(_batches(swept))
    assert all(sum(p.pages for p in b) <= CHUNK_PAGES and len(b) <= RANGES for b in batches)
    return [(p.region, p.first + i) for b in batches for p in b for i in range(p.pages)]


def test_small_regions_share_a_run_and_a_big_one_continues_in_the_next() -> None:
    swept = regions(PAGE, BIG * PAGE, 100, 2 * PAGE + 1)
    batches = list(_batches(swept))
    assert [[(p.region, p.first, p.pages) for p in b] for b in batches] == [
        [(0, 0, 1), (1, 0, CHUNK_PAGES - 1)],
        [(1, CHUNK_PAGES - 1, 45), (2, 0, 1), (3, 0, 3)],
    ]
    expected = [(r, page) for r, n in enumerate((1, BIG, 1, 3)) for page in range(n)]
    assert pages_in_order(swept) == expected


def test_a_run_holds_at_most_ranges_ranges() -> None:
    swept = regions(*[8] * (RANGES + 3))
    assert [len(b) for b in _batches(swept)] == [RANGES, 3]
    assert pages_in_order(swept) == [(r, 0) for r in range(RANGES + 3)]


def test_full_runs_end_exactly_and_empty_regions_take_no_room() -> None:
    swept = regions(CHUNK_PAGES * PAGE, 0, CHUNK_PAGES * PAGE)
    found = [[(p.region, p.pages) for p in b] for b in _batches(swept)]
    assert found == [[(0, CHUNK_PAGES)], [(2, CHUNK_PAGES)]]


def test_a_plan_gives_each_page_one_slot_in_order_and_each_run_its_own_slots() -> None:
    swept = tuple(regions(PAGE, BIG * PAGE, 0, 2 * PAGE + 1))
    plan = _Plan.of(swept, RECHECK_EVERY)
    assert plan.pages == BIG + 4 and plan.sizes == (1, BIG, 0, 3)
    assert plan.slots == (0, 1, BIG + 1, BIG + 1)
    runs = [(r.slot, r.pages, r.ranges) for r in plan.runs]
    assert runs == [(0, CHUNK_PAGES, 2), (CHUNK_PAGES, 48, 2)]
    # each range's address, bytes and place in the copy, its status -1 until the run writes it
    table = [struct.unpack_from("<QQQq", plan.runs[1].table, 32 * i) for i in range(2)]
    assert table == [
        ((1 << 32) + (CHUNK_PAGES - 1) * PAGE, 45 * PAGE, 0, -1),
        (3 << 32, 3 * PAGE, 45 * PAGE, -1),
    ]
    assert plan.runs[1].owners == (1, 3)
    assert [plan.region_of(s) for s in (0, 1, BIG, BIG + 1, BIG + 3)] == [0, 1, 1, 3, 3]


def test_slots_of_the_regions_not_judged_last_sweep() -> None:
    plan = _Plan.of(tuple(regions(PAGE, BIG * PAGE, 2 * PAGE)), RECHECK_EVERY)
    first, second = plan.runs
    assert first.slots_of([{}, None, {}]) == list(range(1, CHUNK_PAGES))
    assert second.slots_of([{}, None, {}]) == list(range(CHUNK_PAGES, BIG + 1))
    assert second.slots_of([None, {}, {1: b""}]) == []


def test_the_recheck_takes_every_page_once_in_recheck_every_sweeps() -> None:
    """Page p of a region at `start` has its turn when start / PAGE + p = sweep (mod the
    rate); over any `every` sweeps each page is taken exactly once, in the run it is in."""
    every = 8
    swept = tuple(Swept((i << 32) + 3 * PAGE * i, b"", n * PAGE) for i, n in enumerate((5, BIG, 9)))
    plan = _Plan.of(swept, every)
    taken: list[int] = []
    for sweep in range(17, 17 + every):
        turns = plan.recheck_slots(sweep)
        for run, slots in turns.items():
            at = plan.runs[run]
            assert all(at.slot <= s < at.slot + at.pages for s in slots)
        for slots in turns.values():
            for s in slots:
                region = plan.region_of(s)
                page = s - plan.slots[region]
                assert (swept[region].start // PAGE + page - sweep) % every == 0
                taken.append(s)
    assert sorted(taken) == list(range(plan.pages))
