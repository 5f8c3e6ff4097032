"""Core kernel text (_stext.._etext) read through the kernel-memory reader and hashed page by
page: the picture that `baseline` keeps and `check` re-verifies. A scan without a baseline
records the reader used, the size and the digest; its findings come with the baseline
(`patchguard check`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from patchguard.findings import Finding, Gap
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.memory import KernelMemory, read_chunks
from patchguard.surfaces.base import SurfaceState

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
    whole = hashlib.sha256()
    for _, chunk in read_chunks(memory, start, end):
        whole.update(chunk)
    return whole.hexdigest()


class KernelTextSurface:
    name = NAME
    title = "Kernel text"

    def collect(self, kernel: Kernel) -> SurfaceState:
        try:
            text = kernel.range("text")
            if text is None:
                return SurfaceState(
                    NAME, [], gaps=[Gap(NAME, "core text", "kallsyms shows no _stext/_etext")]
                )
            memory = kernel.memory()
            digest = hash_range(memory, text.start, text.end)
        except KernelAccessError as exc:
            return SurfaceState(NAME, [], gaps=[Gap(NAME, "core text", str(exc))])
        image = TextImage(memory.name, text.start, text.end, text.size, digest)
        return SurfaceState(NAME, [image], {"bytes": text.size})

    def assess(self, state: SurfaceState) -> list[Finding]:
        return []
