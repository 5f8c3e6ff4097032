"""Kernel memory read a page at a time and kept for one look: for walks of many small reads
(pointers, names, list links) that land in few pages.

Naming ~80 hidden BPF trampolines reads ~1,800 words and names of `struct bpf_prog`s, their
`aux` and the bpf_kallsyms list, which lie in ~220 pages; each read through the eBPF reader
is one bpf(2) test run. Read through this, each page is one run. The pages are a snapshot of
one look (a scan's surface), never kept beyond it, so nothing stale outlives that look.
"""

from __future__ import annotations

from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KernelMemory

PAGE = 4096


class PageCache:
    """A KernelMemory over another that reads whole pages and keeps them. A page that cannot be
    read whole is not kept, and the read goes to the memory below as asked, so it succeeds or
    fails exactly as it would have there."""

    def __init__(self, memory: KernelMemory) -> None:
        self.memory = memory
        self.name = memory.name
        self._pages: dict[int, bytes] = {}

    def read(self, address: int, size: int) -> bytes:
        first, last = address // PAGE, (address + size - 1) // PAGE
        try:
            pages = b"".join(self._page(p) for p in range(first, last + 1))
        except KernelAccessError:
            return self.memory.read(address, size)
        at = address - first * PAGE
        return pages[at : at + size]

    def _page(self, number: int) -> bytes:
        page = self._pages.get(number)
        if page is None:
            page = self._pages[number] = self.memory.read(number * PAGE, PAGE)
        return page

    def close(self) -> None:
        """The memory below is not this one's to close: the cache is dropped alone."""
        self._pages.clear()
