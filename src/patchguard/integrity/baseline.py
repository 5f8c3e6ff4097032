"""The trusted picture of the kernel: regions of kernel memory with per-page hashes, the boot
they belong to, and the facts about patch sites that `check` verifies changes against."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

PAGE = 4096


def page_hashes(data: bytes) -> tuple[str, ...]:
    """SHA-256 hex of each 4 KiB page of `data` (the last page may be short)."""
    view = memoryview(data)
    return tuple(hashlib.sha256(view[i : i + PAGE]).hexdigest() for i in range(0, len(data), PAGE))


@dataclass(frozen=True)
class Region:
    name: str  # "core_text", "jump_table", "static_call_sites", ...
    start: int  # kernel virtual address
    data: bytes
    page_sha256: tuple[str, ...]  # of each 4 KiB page of data from `start`

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(frozen=True)
class BaselineMeta:
    boot_id: str
    kernel_release: str
    kaslr_offset: int
    created_at: str  # ISO 8601 UTC
    host: str
    reader: str  # "ebpf" or "kcore"
    patchguard_version: str


@dataclass(frozen=True)
class Baseline:
    meta: BaselineMeta
    regions: Mapping[str, Region]
    sites: Mapping[str, object]  # JSON-able facts about patch sites, stored as JSON
    # Small JSON-able facts every check reports (how syscalls are dispatched): kept in the
    # signed manifest itself, where `sites` are read only when a page of text changed.
    summary: Mapping[str, object] = field(default_factory=dict)
