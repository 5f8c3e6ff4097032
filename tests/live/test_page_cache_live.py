"""Kernel memory read a page at a time (kernel/page_cache.py), on the running kernel's text."""

from __future__ import annotations

import pytest
from support.counted_reads import Counted

from patchguard.kernel import Kernel
from patchguard.kernel.memory import MemoryReadError
from patchguard.kernel.page_cache import PAGE, PageCache

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_reads_through_pages_are_the_bytes_read_directly(kernel: Kernel) -> None:
    text = kernel.range("text")
    assert text is not None
    memory = kernel.memory()
    page = (text.start + 5 * PAGE) & ~(PAGE - 1)
    asked = [(page, 8), (page + 8, 8), (page + PAGE - 3, 8), (page + 100, 3 * PAGE), (page, 0)]
    counted = Counted(memory)
    cached = PageCache(counted)
    for address, size in asked:
        assert cached.read(address, size) == memory.read(address, size), (hex(address), size)
    assert counted.reads == 4  # pages page .. page + 3, each read once


def test_an_unreadable_page_fails_as_the_memory_below_does(kernel: Kernel) -> None:
    cached = PageCache(kernel.memory())
    with pytest.raises(MemoryReadError, match=r"kernel memory 0x10\+0x8: bpf_probe_read_kernel"):
        cached.read(0x10, 8)
