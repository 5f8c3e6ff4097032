"""Core kernel text (_stext.._etext) read through the kernel-memory reader and hashed page by
page: the picture that `baseline` keeps and `check` re-verifies. A scan without a baseline
records the reader used, the size and the digest, and checks what needs no baseline: every
ftrace site holds a NOP or a call to an ftrace or BPF trampoline (ftrace_sites.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from patchguard.findings import Finding, Gap
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.memory import KernelMemory, read_chunks
from patchguard.surfaces.base import RecordSet, SurfaceState
from patchguard.surfaces.ftrace_sites import FtraceSites, check_sites, findings

NAME = "kernel_text"


@dataclass(frozen=True)
class TextImage:
    reader: str  # "ebpf" or "kcore"
    start: int
    end: int
    size: int
    sha256: str  # of the whole range


def hash_range(memory: KernelMemory, start: int, end: int) -> str:
    """SHA-256 of [start, end), read in READ_SIZE chunks."""
    return read_and_hash(memory, start, end)[0]


def read_and_hash(memory: KernelMemory, start: int, end: int) -> tuple[str, bytes]:
    """SHA-256 of [start, end) and the bytes, read in READ_SIZE chunks."""
    whole, chunks = hashlib.sha256(), []
    for _, chunk in read_chunks(memory, start, end):
        whole.update(chunk)
        chunks.append(chunk)
    return whole.hexdigest(), b"".join(chunks)


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
            digest, code = read_and_hash(memory, text.start, text.end)
        except KernelAccessError as exc:
            return _unread(str(exc))
        image = TextImage(memory.name, text.start, text.end, text.size, digest)
        counts, gaps = {"bytes": text.size}, []
        try:
            sites = check_sites(kernel, memory, code, text.start)
        except KernelAccessError as exc:
            gaps.append(Gap(NAME, "ftrace sites (ftrace records)", str(exc)))
            return SurfaceState(NAME, KernelTextRecords(image), counts, gaps)
        counts |= {
            "ftrace_sites": sites.sites,
            "ftrace_sites_calling": sites.calls,
            "ftrace_sites_unlisted": sites.unlisted,
        }
        return SurfaceState(NAME, KernelTextRecords(image, sites), counts, gaps)

    def assess(self, state: SurfaceState[KernelTextRecords]) -> list[Finding]:
        sites = state.records.ftrace_sites
        return [] if sites is None else findings(NAME, sites)


def _unread(reason: str) -> SurfaceState[KernelTextRecords]:
    return SurfaceState(NAME, KernelTextRecords(), gaps=[Gap(NAME, "core text", reason)])
