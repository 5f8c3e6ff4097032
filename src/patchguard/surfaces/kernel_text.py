"""Core kernel text (_stext.._etext) read through the kernel-memory reader and hashed page by
page: the picture that `baseline` keeps and `check` re-verifies. A scan without a baseline
records the reader used, the size and the digest, and checks what needs no baseline: every
ftrace site holds a NOP or a call to an ftrace or BPF trampoline (ftrace_sites.py)."""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from patchguard.findings import Finding, Gap
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.ftrace_records import Records
from patchguard.kernel.memory import KernelMemory, read_chunks
from patchguard.surfaces.base import RecordSet, SurfaceState
from patchguard.surfaces.ftrace_sites import (
    FtraceSites,
    findings,
    judge_sites,
    read_records,
    site_code,
)
from patchguard.x86.insn import NOP5

NAME = "kernel_text"


@dataclass(frozen=True)
class TextImage:
    reader: str  # "ebpf" or "kcore"
    start: int
    end: int
    size: int
    sha256: str  # of the whole range


class SiteBytes:
    """The 5 bytes at each ftrace site of the core text but those holding a NOP5, taken from
    each chunk of the text as it is hashed: the 19 MB are never kept or joined (that cost a
    scan ~15 ms of page faults and copying). A site across two chunks is finished with the
    next one's first bytes."""

    def __init__(self, sites: Sequence[int], start: int, end: int) -> None:
        self.order = sites  # the records' order, which the judged sites keep
        inside = [s for s in sites if start <= s <= end - 5]
        self.outside = [s for s in sites if not start <= s <= end - 5] if inside != sites else []
        self.sorted = sorted(inside)  # linear where the records are in order, as here
        self.in_order = self.sorted == sites
        self.found: dict[int, bytes] = {}
        self._split: list[tuple[int, bytes]] = []  # sites the last chunk cut, their first bytes

    def feed(self, at: int, chunk: bytes) -> None:
        """Take the sites of `chunk`, the text at `at`, which follows the previous chunk."""
        for site, head in self._split:
            if (code := head + chunk[: 5 - len(head)]) != NOP5:
                self.found[site] = code
        sites, end = self.sorted, at + len(chunk)
        first = bisect_left(sites, at)
        whole = bisect_right(sites, end - 5, first)
        # one comprehension a chunk, no call per site (48k sites)
        self.found |= {
            s: c for s in sites[first:whole] if (c := chunk[s - at : s - at + 5]) != NOP5
        }
        self._split = [(s, chunk[s - at :]) for s in sites[whole : bisect_left(sites, end)]]

    def codes(self, memory: KernelMemory) -> dict[int, bytes]:
        """Every site's bytes but NOP5s, in the records' order; those outside the core text
        read from memory, one read per page (site_code)."""
        if self.in_order:
            return self.found
        found = self.found
        if self.outside:
            found = found | site_code(self.outside, b"", 0, memory.read, skip=NOP5)
        return {s: found[s] for s in self.order if s in found}


@dataclass(frozen=True)
class KernelTextRecords(RecordSet):
    """The kernel text surface's records: the image read, and its ftrace sites checked."""

    image: TextImage | None = None
    ftrace_sites: FtraceSites | None = None


class KernelTextSurface:
    name = NAME
    title = "Kernel text"

    def collect(self, kernel: Kernel) -> SurfaceState[KernelTextRecords]:
        try:
            text = kernel.range("text")
            if text is None:
                return _unread("kallsyms shows no _stext/_etext")
            memory = kernel.memory()
        except KernelAccessError as exc:
            return _unread(str(exc))
        # ftrace's records first, so that their sites' bytes are taken as the text streams by
        records: tuple[Records, str] | KernelAccessError
        try:
            records = read_records(kernel, memory)
        except KernelAccessError as exc:
            records = exc
        listed = records[0].sites if isinstance(records, tuple) else []
        sites = SiteBytes(listed, text.start, text.end)
        try:
            digest = _hash_taking_sites(memory, text.start, text.end, sites)
        except KernelAccessError as exc:
            return _unread(str(exc))
        image = TextImage(memory.name, text.start, text.end, text.size, digest)
        return _judged(kernel, memory, image, records, sites)

    def assess(self, state: SurfaceState[KernelTextRecords]) -> list[Finding]:
        sites = state.records.ftrace_sites
        return [] if sites is None else findings(NAME, sites)


def _hash_taking_sites(memory: KernelMemory, start: int, end: int, sites: SiteBytes) -> str:
    """SHA-256 of [start, end), read in READ_SIZE chunks, each given to `sites` too."""
    whole = hashlib.sha256()
    for at, chunk in read_chunks(memory, start, end):
        whole.update(chunk)
        sites.feed(at, chunk)
    return whole.hexdigest()


def _judged(
    kernel: Kernel,
    memory: KernelMemory,
    image: TextImage,
    records: tuple[Records, str] | KernelAccessError,
    sites: SiteBytes,
) -> SurfaceState[KernelTextRecords]:
    counts, gaps = {"bytes": image.size}, []
    try:
        if isinstance(records, KernelAccessError):
            raise records
        judged = judge_sites(kernel, memory, *records, sites.codes(memory))
    except KernelAccessError as exc:
        gaps.append(Gap(NAME, "ftrace sites (ftrace records)", str(exc)))
        return SurfaceState(NAME, KernelTextRecords(image), counts, gaps)
    counts |= {
        "ftrace_sites": judged.sites,
        "ftrace_sites_calling": judged.calls,
        "ftrace_sites_unlisted": judged.unlisted,
    }
    return SurfaceState(NAME, KernelTextRecords(image, judged), counts, gaps)


def _unread(reason: str) -> SurfaceState[KernelTextRecords]:
    return SurfaceState(NAME, KernelTextRecords(), gaps=[Gap(NAME, "core text", reason)])
