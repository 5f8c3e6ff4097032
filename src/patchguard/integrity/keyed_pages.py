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
them (a run: up to 256 ranges, 1 MiB).
"""

from __future__ import annotations

import hashlib
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
from patchguard.kernel.bpf.text_hash import CHUNK_PAGES, DIGEST, PAGE, RANGES, TextHasher
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KernelMemory, MemoryReadError

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


@dataclass
class _Judged:
    """What the last sweep judged of one region."""

    page_digests: bytes  # the baseline's, to tell a rotated baseline
    size: int
    sweep: int
    records: bytes  # (A, B) digests per page, 16 bytes a page
    changed: dict[int, bytes] = field(default_factory=dict)  # page -> bytes unlike baseline


@dataclass
class SweepCounts:
    pages: int = 0
    hashed: int = 0  # SHA-256'd in user space: moved, or not chained
    rechecked: int = 0  # unmoved, SHA-256'd anyway: this sweep's share of the rolling recheck
    runs: int = 0  # BPF runs


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
        self._judged: dict[int, _Judged] = {}
        self.counts = SweepCounts()
        self._verified: tuple[FileStamp, bytes, Manifest] | None = None
        self._module_structs: KnownStructs = {}
        self._modules: tuple[str, LiveModules] | None = None  # /proc/modules, what it gave

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

    def live_modules(self, kernel: Kernel) -> LiveModules:
        """module_regions.live_modules, each struct module where the last sweep found it
        while /proc/modules says the module is where it was, all read in one run; or, while
        /proc/modules reads as it did, the last sweep's (found with no gap). A module can
        neither come, go nor move without /proc/modules changing; what its struct module
        says of its text cannot change while it is loaded, and a write there would only make
        a sweep that read it again compare less (the baseline's regions are what is
        compared)."""
        listing = module_listing(kernel)
        if listing is not None and self._modules is not None and self._modules[0] == listing:
            return self._modules[1]
        found = live_modules(kernel, self._module_structs, self._hasher.gather, listing)
        self._modules = (listing, found) if listing is not None and not found.gaps else None
        return found

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
        now = [self._start(r) for r in regions]
        failed: set[int] = set()
        for batch in _batches(regions):
            failed |= self._run(batch, regions, now)
        return [
            self._finish(memory, r, j, i in failed)
            for i, (r, j) in enumerate(zip(regions, now, strict=True))
        ]

    def _start(self, region: Swept) -> _Sweeping:
        last = self._trusted(region.start, region.page_digests, region.size)
        return _Sweeping(last, _Judged(region.page_digests, region.size, self._sweep, b""))

    def _run(self, batch: list[_Piece], regions: Sequence[Swept], now: list[_Sweeping]) -> set[int]:
        """One BPF run over the batch's pieces: each piece's pages compared, the moved ones
        judged from the copy; the regions whose copy failed."""
        ranges = [(regions[p.region].start + p.first * PAGE, p.pages) for p in batch]
        self.counts.runs += 1
        try:
            statuses = self._hasher.hash_ranges(ranges)
        except MemoryReadError:
            return {p.region for p in batch}
        live = self._hasher.records(sum(p.pages for p in batch))
        failed, at = set(), 0
        for piece, status in zip(batch, statuses, strict=True):
            if status:
                failed.add(piece.region)
            else:
                self._compare(piece, at, live, now[piece.region], regions[piece.region].start)
            at += piece.pages
        return failed

    def _compare(
        self, piece: _Piece, at: int, live: bytes, sweeping: _Sweeping, start: int
    ) -> None:
        """The piece's digests (from page `at` of the run) against the last sweep's: moved
        pages judged, and this sweep's share of the unmoved ones judged again all the same."""
        mine = live[at * DIGEST : (at + piece.pages) * DIGEST]
        sweeping.records += mine
        last, now = sweeping.last, sweeping.now
        moved = _moved(mine, last, piece.first, piece.pages)
        again = self._recheck(piece, start, moved) if last is not None else []
        for page in moved + again:
            self._judge(now, page, at + page - piece.first)
        self.counts.hashed += len(moved)
        self.counts.rechecked += len(again)
        if last is not None and last.changed:  # verdicts of unmoved pages stand, bytes and all
            judged, end = {*moved, *again}, piece.first + piece.pages
            now.changed |= {
                p: data
                for p, data in last.changed.items()
                if piece.first <= p < end and p not in judged
            }

    def _recheck(self, piece: _Piece, start: int, moved: list[int]) -> list[int]:
        """The piece's unmoved pages whose turn it is: page p of a region at `start` when
        start / PAGE + p = this sweep, mod RECHECK_EVERY (regions' first pages spread over the
        sweeps, not all at once)."""
        every = self._recheck_every
        first = piece.first + (self._sweep - start // PAGE - piece.first) % every
        return [p for p in range(first, piece.first + piece.pages, every) if p not in moved]

    def _finish(
        self, memory: KernelMemory, region: Swept, sweeping: _Sweeping, failed: bool
    ) -> dict[int, bytes]:
        from patchguard.integrity.check import changed_pages

        if failed:  # a page the kernel copy could not read: the reader says which
            self._judged.pop(region.start, None)
            return changed_pages(memory, region.start, region.page_digests, region.size)
        now = sweeping.now
        now.records = bytes(sweeping.records)
        self._judged[region.start] = now
        self.counts.pages += -(-region.size // PAGE)
        return dict(now.changed)

    def _trusted(self, start: int, page_digests: bytes, size: int) -> _Judged | None:
        last = self._judged.get(start)
        if last is None or last.sweep != self._sweep - 1:
            return None
        return last if (last.page_digests, last.size) == (page_digests, size) else None

    def _judge(self, now: _Judged, page: int, copied: int) -> None:
        """SHA-256 of the region's page `page`, page `copied` of the run's copy."""
        data = self._hasher.copy(copied + 1)[copied * PAGE :][: min(PAGE, now.size - page * PAGE)]
        if hashlib.sha256(data).digest() != now.page_digests[32 * page : 32 * page + 32]:
            now.changed[page] = bytes(data)


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


@dataclass
class _Sweeping:
    """One region during a sweep: the last sweep's judgment it is compared with, this one's."""

    last: _Judged | None
    now: _Judged
    records: bytearray = field(default_factory=bytearray)


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


def _moved(live: bytes, last: _Judged | None, first: int, n: int) -> list[int]:
    """Pages of this chunk whose A digest is not the B digest the last sweep kept."""
    if last is None:
        return list(range(first, first + n))
    now_a = memoryview(live).cast("Q")[0::2]
    kept_b = memoryview(last.records).cast("Q")[2 * first + 1 : 2 * (first + n) : 2]
    if now_a == kept_b:
        return []
    return [first + i for i, (a, b) in enumerate(zip(now_a, kept_b, strict=True)) if a != b]


__all__ = ["KeyedPages", "SweepCounts", "Swept"]
