"""Sweeps that hash in the kernel: the guard's repeated check compares keyed page digests the
kernel computes (kernel/bpf/text_hash.py) and SHA-256s only the pages whose digest moved.

A sweep hashes every page, from one copy of it made in the kernel, under the key the last
sweep kept (key A) and, every ROTATE_EVERY sweeps, under a fresh key B too; the other sweeps
keep the key (B is A: one NH pass, half the multiplies). A page whose A digest equals the
digest kept from the last sweep holds the bytes that sweep judged, so its verdict (matches the
baseline, or changed with these bytes) stands; any other page is SHA-256'd from that same copy
and judged against the signed baseline afresh. The B digests are kept for the next sweep.
Every verdict thus rests on a SHA-256 of the bytes once, and on a comparison under a key no
one outside this process and the kernel saw. The first sweep, a region whose baseline
changed, or one skipped for a sweep, is judged by SHA-256 whole; and each sweep SHA-256s
1/RECHECK_EVERY of the unmoved pages all the same, so a collision is carried RECHECK_EVERY
sweeps at most. docs/guard.md says why one key may serve several sweeps, and what a collision
that slipped through costs. All regions of a sweep are packed into as few BPF runs as hold
them (a run: up to 256 ranges, 2 MiB).

What is Python in a sweep is kept to a few C-level operations a run: the runs' range tables
are made once per set of regions (a plan, made again only when the baseline or the modules
change), each page has a slot in the sweep, the digests kept are one buffer of 8 bytes a
slot, and a run's A digests are compared with the kept ones as one bytes compare; only a run
whose compare fails is looked at page by page.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from patchguard.integrity.module_regions import (
    KnownStructs,
    LiveModules,
    live_modules,
    module_listing,
)
from patchguard.integrity.store import FileStamp, Manifest
from patchguard.kernel.bpf.text_hash import CHUNK_PAGES, PAGE, RANGES, TextHasher, range_table
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KernelMemory, MemoryReadError
from patchguard.kernel.proc_modules import PROC_MODULES

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


@dataclass
class SweepCounts:
    pages: int = 0
    hashed: int = 0  # SHA-256'd in user space: moved, or not chained
    rechecked: int = 0  # unmoved, SHA-256'd anyway: this sweep's share of the rolling recheck
    runs: int = 0  # BPF runs
    kernel_seconds: float = 0.0  # in those runs


ROTATE_EVERY = 8  # sweeps between fresh keys: a leaked key serves at most this many sweeps
# Every page is SHA-256'd again, moved or not, at least once in this many sweeps (1/N of them
# each sweep): a change whose NH digest collided is carried no longer (docs/guard.md). Under
# the lab's emulation a SHA-256 costs ~30 NH passes of a page: 1/64 added 46 % to a sweep,
# 1/256 ~12 %
RECHECK_EVERY = 256


class KeyedPages:
    """The guard keeps one across sweeps; `begin_sweep()` before each."""

    def __init__(
        self,
        hasher: TextHasher,
        rotate_every: int = ROTATE_EVERY,
        recheck_every: int = RECHECK_EVERY,
    ) -> None:
        self._hasher = hasher
        self._rotate_every = rotate_every
        self._recheck_every = recheck_every
        self._sweep = 0
        self._state: _State | None = None  # what the last sweep kept
        self._turns: tuple[_Plan | None, dict[int, dict[int, list[int]]]] = (None, {})
        self.counts = SweepCounts()
        self._verified: tuple[FileStamp, bytes, Manifest] | None = None
        self._module_structs: KnownStructs = {}
        self._modules: tuple[str, LiveModules] | None = None  # /proc/modules, what it gave
        self._listing_fd: int | None = None

    @classmethod
    def open(
        cls, kernel: Kernel, rotate_every: int = ROTATE_EVERY, recheck_every: int = RECHECK_EVERY
    ) -> KeyedPages | None:
        """None where the kernel refuses the program (no bpf_loop before 5.17, no BTF): the
        sweeps then SHA-256 every page in user space, as `check` does."""
        try:
            hasher = TextHasher()
        except (KernelAccessError, OSError):
            return None
        kernel.own_prog_ids.add(hasher.prog_id)
        kernel.own_map_ids.update(hasher.map_ids)
        return cls(hasher, rotate_every, recheck_every)

    def close(self) -> None:
        self._hasher.close()
        if self._listing_fd is not None:
            os.close(self._listing_fd)
            self._listing_fd = None

    def live_modules(self, kernel: Kernel) -> LiveModules:
        """module_regions.live_modules, each struct module where the last sweep found it
        while /proc/modules says the module is where it was, all read in one run; or, while
        /proc/modules reads as it did, the last sweep's (found with no gap). A module can
        neither come, go nor move without /proc/modules changing; what its struct module
        says of its text cannot change while it is loaded, and a write there would only make
        a sweep that read it again compare less (the baseline's regions are what is
        compared)."""
        listing = self._module_listing(kernel)
        if listing is not None and self._modules is not None and self._modules[0] == listing:
            return self._modules[1]
        found = live_modules(kernel, self._module_structs, self._hasher.gather, listing)
        self._modules = (listing, found) if listing is not None and not found.gaps else None
        return found

    def _module_listing(self, kernel: Kernel) -> str | None:
        """/proc/modules through one descriptor kept open (module_listing's text): each read
        from offset 0 makes the kernel write it afresh, and a sweep saves the open."""
        if self._listing_fd is None:
            try:
                self._listing_fd = os.open(kernel.path(PROC_MODULES), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return module_listing(kernel)  # no module support: None, as a check says
        try:
            return _read_whole(self._listing_fd).decode(errors="replace")
        except OSError:
            os.close(self._listing_fd)
            self._listing_fd = None
            return module_listing(kernel)  # as a check reads it, error and all

    def verified_manifest(self, stamp: FileStamp | None, public_key: bytes) -> Manifest | None:
        """The manifest a sweep read, verified, and verified the stored region streams
        against, while the baseline file is that one by its stat (and the key the same): later
        sweeps skip reading it and SHA-256ing every stored byte. Each region's stream is still
        verified whenever it is read to explain a change (docs/guard.md)."""
        if stamp is None or self._verified is None:
            return None
        known_stamp, known_key, manifest = self._verified
        return manifest if (known_stamp, known_key) == (stamp, public_key) else None

    def note_verified(self, stamp: FileStamp | None, public_key: bytes, manifest: Manifest) -> None:
        self._verified = None if stamp is None else (stamp, public_key, manifest)

    def begin_sweep(self) -> None:
        """The first sweep hashes under the fresh key the hasher drew (nothing to compare);
        then every `rotate_every` sweeps one changes it (two keys), the others keep it."""
        self._sweep += 1
        if self._sweep > 1 and (self._sweep - 1) % self._rotate_every == 0:
            self._hasher.new_keys()
        else:
            self._hasher.keep_key()
        self.counts = SweepCounts()

    def changed_pages(
        self, memory: KernelMemory, start: int, page_digests: bytes, size: int
    ) -> dict[int, bytes]:
        """As integrity.check.changed_pages: live bytes of each page unlike the baseline."""
        return self.changed_regions(memory, [Swept(start, page_digests, size)])[0]

    def changed_regions(
        self, memory: KernelMemory, regions: Sequence[Swept]
    ) -> list[dict[int, bytes]]:
        """changed_pages of each region, the regions packed into as few BPF runs as hold
        them (a module's text or table is a page or two: one run each would cost more than
        its hashing). A region a run could not copy is read again by the memory reader,
        which says which page failed."""
        plan = self._plan_for(regions)
        sweeping = _Sweeping(plan, self._carried(plan), bytearray(8 * plan.pages))
        sweeping.run_seconds = self._hasher.run_seconds
        turns = self._recheck_turns(plan)
        for run in plan.runs:
            self._sweep_run(sweeping, run, turns)
        return self._finish(memory, sweeping)

    def _recheck_turns(self, plan: _Plan) -> dict[int, list[int]]:
        """plan.recheck_slots of this sweep, made once per plan and turn (they repeat every
        recheck_every sweeps)."""
        if self._turns[0] is not plan:
            self._turns = (plan, {})
        turn = self._sweep % self._recheck_every
        if turn not in self._turns[1]:
            self._turns[1][turn] = plan.recheck_slots(self._sweep)
        return self._turns[1][turn]

    def _plan_for(self, regions: Sequence[Swept]) -> _Plan:
        """The last sweep's plan while the regions are those (the baseline and the modules
        as they were): ranges tables, slots and recheck turns are not made again."""
        if self._state is not None and self._state.plan.regions == tuple(regions):
            return self._state.plan
        return _Plan.of(tuple(regions), self._recheck_every)

    def _carried(self, plan: _Plan) -> _State:
        """What the last sweep kept that this one may trust: per region, the chain (its
        digests under this sweep's key A, and its verdicts) if the last sweep was the one
        before and judged that region, with this baseline and size; else nothing."""
        last = self._state
        kept = _State(plan, self._sweep - 1, bytearray(8 * plan.pages), [None] * len(plan.regions))
        if last is None or last.sweep != self._sweep - 1:
            return kept
        if last.plan is plan:
            return last
        where = {r: i for i, r in enumerate(last.plan.regions) if last.changed[i] is not None}
        for i, region in enumerate(plan.regions):
            if (j := where.get(region)) is not None:
                at, was, n = 8 * plan.slots[i], 8 * last.plan.slots[j], 8 * plan.sizes[i]
                kept.digests[at : at + n] = last.digests[was : was + n]
                kept.changed[i] = last.changed[j]
        return kept

    def _sweep_run(self, sweeping: _Sweeping, run: _Run, turns: dict[int, list[int]]) -> None:
        """One BPF run: its pages' A digests compared with the kept ones in one compare; the
        moved pages, and those whose recheck turn it is, SHA-256'd from the copy. (Under
        emulation a Python call costs microseconds: the common path here makes few.)"""
        try:
            copied, now_a, now_b = self._hasher.run_digests(run.table, run.ranges, run.pages)
        except MemoryReadError:
            sweeping.failed.update(run.owners)
            return
        if not copied:
            self._note_failed(sweeping, run)
        at, end = 8 * run.slot, 8 * (run.slot + run.pages)
        sweeping.digests[at:end] = now_b
        moved: list[int] = []
        if sweeping.untrusted or now_a != sweeping.kept.digests[at:end]:
            moved = self._moved(sweeping, run, now_a)
        again = [s for s in turns.get(run.index, ()) if s not in moved]
        for slot in moved + again:
            self._judge(sweeping, run, slot)
        self.counts.hashed += len(moved)
        self.counts.rechecked += len(again)

    def _moved(self, sweeping: _Sweeping, run: _Run, now_a: bytes) -> list[int]:
        """Slots of the run whose A digest is not the one the last sweep kept, or whose region
        it did not judge (all of that region's pages)."""
        kept, at = sweeping.kept, 8 * run.slot
        last = kept.digests[at : at + 8 * run.pages]
        pairs = zip(memoryview(now_a).cast("Q"), memoryview(last).cast("Q"), strict=True)
        differ = {run.slot + i for i, (a, b) in enumerate(pairs) if a != b}
        return sorted(differ.union(run.slots_of(kept.changed)))

    def _note_failed(self, sweeping: _Sweeping, run: _Run) -> None:
        """The regions of ranges whose copy failed: read again by the memory reader."""
        for status, region in zip(self._hasher.statuses(run.ranges), run.owners, strict=True):
            if status:
                sweeping.failed.add(region)

    def _judge(self, sweeping: _Sweeping, run: _Run, slot: int) -> None:
        """SHA-256 of the page in `slot` (from the run's copy) against the baseline's."""
        plan = sweeping.plan
        region = plan.region_of(slot)
        if region in sweeping.failed:
            return
        swept, page = plan.regions[region], slot - plan.slots[region]
        copied = slot - run.slot
        data = self._hasher.copy(copied + 1)[copied * PAGE :][: min(PAGE, swept.size - page * PAGE)]
        digest = swept.page_digests[32 * page : 32 * page + 32]
        unlike = hashlib.sha256(data).digest() != digest
        _apply(sweeping, region, page, data if unlike else None)

    def _finish(self, memory: KernelMemory, sweeping: _Sweeping) -> list[dict[int, bytes]]:
        """Each region's verdicts (a region none of whose pages was judged keeps the last
        sweep's dict); a region whose copy failed is judged by the memory reader, and is not
        chained to the next sweep."""
        from patchguard.integrity.check import changed_pages

        plan, failed, touched = sweeping.plan, sweeping.failed, sweeping.touched
        kept: list[dict[int, bytes] | None] = [
            touched.get(i, last or {}) for i, last in enumerate(sweeping.kept.changed)
        ]
        found = [dict(v) if v else {} for v in kept]
        for i in failed:  # the reader says which page failed
            region = plan.regions[i]
            found[i] = changed_pages(memory, region.start, region.page_digests, region.size)
            kept[i] = None
        self._state = _State(plan, self._sweep, sweeping.digests, kept)
        self.counts.runs = len(plan.runs)
        self.counts.pages = plan.pages - sum(plan.sizes[i] for i in failed)
        self.counts.kernel_seconds = self._hasher.run_seconds - sweeping.run_seconds
        return found


@dataclass(frozen=True)
class Swept:
    """A region a sweep judges: where it is, and its baseline's page digests."""

    start: int
    page_digests: bytes
    size: int


@dataclass(frozen=True)
class _Piece:
    """Pages [first, first + pages) of region `region`, in one run."""

    region: int
    first: int
    pages: int


@dataclass(frozen=True)
class _Run:
    """One BPF run of a plan: its range table made once, its pages' slots in the sweep."""

    index: int
    table: bytes
    slot: int  # the sweep's slot of the run's first page
    pages: int
    owners: tuple[int, ...]  # each range's region
    pieces: tuple[tuple[int, int, int], ...]  # (region, first slot, pages) of each range

    @property
    def ranges(self) -> int:
        return len(self.owners)

    def slots_of(self, changed: list[dict[int, bytes] | None]) -> list[int]:
        """The run's slots of regions the last sweep did not judge (changed is None)."""
        return [
            s for region, at, n in self.pieces if changed[region] is None for s in range(at, at + n)
        ]


@dataclass(frozen=True)
class _Plan:
    """A sweep's regions cut into runs, and where each region's pages sit in the sweep's
    slots (one slot a page, in order): made again only when the regions change."""

    regions: tuple[Swept, ...]
    sizes: tuple[int, ...]  # pages of each region
    slots: tuple[int, ...]  # each region's first slot
    pages: int
    runs: tuple[_Run, ...]
    recheck_every: int

    @classmethod
    def of(cls, regions: tuple[Swept, ...], recheck_every: int) -> _Plan:
        sizes = tuple(-(-r.size // PAGE) for r in regions)
        slots = tuple(itertools.accumulate(sizes, initial=0))
        runs, at = [], 0
        for index, batch in enumerate(_batches(regions)):
            spans = [(regions[p.region].start + p.first * PAGE, p.pages * PAGE) for p in batch]
            pieces = tuple((p.region, slots[p.region] + p.first, p.pages) for p in batch)
            pages = sum(p.pages for p in batch)
            owners = tuple(p.region for p in batch)
            runs.append(_Run(index, range_table(spans), at, pages, owners, pieces))
            at += pages
        return cls(regions, sizes, slots[:-1], slots[-1], tuple(runs), recheck_every)

    def region_of(self, slot: int) -> int:
        return bisect.bisect_right(self.slots, slot) - 1

    def recheck_slots(self, sweep: int) -> dict[int, list[int]]:
        """This sweep's share of the rolling recheck, by run: page p of a region at `start`
        when start / PAGE + p = sweep, mod recheck_every (regions' first pages spread over
        the sweeps, not all at once)."""
        every, found = self.recheck_every, list[int]()
        for region, at, n in zip(self.regions, self.slots, self.sizes, strict=True):
            found += range(at + (sweep - region.start // PAGE) % every, at + n, every)
        starts = [run.slot for run in self.runs]
        turns: dict[int, list[int]] = {}
        for slot in found:
            turns.setdefault(bisect.bisect_right(starts, slot) - 1, []).append(slot)
        return turns


@dataclass
class _State:
    """What a sweep kept for the next: its plan, the digests under the key the next sweep
    compares with (8 bytes a slot), and each region's verdicts (None: not judged)."""

    plan: _Plan
    sweep: int
    digests: bytearray
    changed: list[dict[int, bytes] | None]


@dataclass
class _Sweeping:
    """One sweep in progress: what it may trust, the digests it keeps, its regions whose copy
    failed, its verdicts (copied from the kept ones when first changed)."""

    plan: _Plan
    kept: _State
    digests: bytearray
    failed: set[int] = field(default_factory=set)
    run_seconds: float = 0.0  # the hasher's time in runs when the sweep began
    touched: dict[int, dict[int, bytes]] = field(default_factory=dict)  # verdicts changed
    untrusted: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        # some region the last sweep did not judge: its pages are all SHA-256'd
        self.untrusted = None in self.kept.changed

    def changed(self, region: int) -> dict[int, bytes]:
        """The region's verdicts, to change: copied from the kept ones the first time."""
        if region not in self.touched:
            self.touched[region] = dict(self.kept.changed[region] or {})
        return self.touched[region]


def _apply(sweeping: _Sweeping, region: int, page: int, data: bytes | memoryview | None) -> None:
    """A judged page's verdict: its bytes if unlike the baseline (None: like it)."""
    changed = sweeping.changed(region)
    if data is None:
        changed.pop(page, None)
    else:
        changed[page] = bytes(data)


LISTING_LIMIT = 8 << 20  # /proc/modules of thousands of modules is well under 1 MiB


def _read_whole(fd: int) -> bytes:
    """All of a pseudo file from offset 0, at most LISTING_LIMIT bytes."""
    parts, at = [], 0
    while data := os.pread(fd, 1 << 16, at):
        parts.append(data)
        at += len(data)
        if at > LISTING_LIMIT:
            raise KernelAccessError(PROC_MODULES, f"more than {LISTING_LIMIT} bytes")
    return b"".join(parts)


def _batches(regions: Sequence[Swept]) -> Iterator[list[_Piece]]:
    """The regions' pages in order, cut into runs of at most CHUNK_PAGES pages and RANGES
    ranges (a region bigger than what is left of a run continues in the next)."""
    batch: list[_Piece] = []
    room = CHUNK_PAGES
    for index, region in enumerate(regions):
        pages, first = -(-region.size // PAGE), 0
        while first < pages:
            n = min(room, pages - first)
            batch.append(_Piece(index, first, n))
            first, room = first + n, room - n
            if room == 0 or len(batch) == RANGES:
                yield batch
                batch, room = [], CHUNK_PAGES
    if batch:
        yield batch


__all__ = ["KeyedPages", "SweepCounts", "Swept"]
