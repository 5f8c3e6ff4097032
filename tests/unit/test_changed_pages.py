"""integrity.changed_pages: which pages differ from the baseline's digests, across read chunks
and a short last page; changed_region: the whole region's digest first, pages only where it
differs (on bytes laid out here; the live check tests read the kernel's)."""

from __future__ import annotations

import hashlib
import os

from support.memory_image import Image

from patchguard.integrity.baseline import PAGE
from patchguard.integrity.check import _changed, changed_pages, changed_region, unsteady
from patchguard.integrity.store import RegionEntry
from patchguard.kernel.memory import READ_SIZE

START = 0xFFFFFFFF81000000


def digests(data: bytes) -> bytes:
    return b"".join(hashlib.sha256(data[i : i + PAGE]).digest() for i in range(0, len(data), PAGE))


def test_unchanged_then_pages_in_several_chunks() -> None:
    old = os.urandom(2 * READ_SIZE + 3 * PAGE + 100)  # three chunks, a short last page
    image = Image()
    image.put(START, old)
    assert changed_pages(image, START, digests(old), len(old)) == {}

    new = bytearray(old)
    last = len(old) // PAGE  # the short page
    for page in (0, READ_SIZE // PAGE - 1, READ_SIZE // PAGE, last):
        new[page * PAGE + 17] ^= 0xFF
    image.put(START, bytes(new))
    changed = changed_pages(image, START, digests(old), len(old))
    assert sorted(changed) == [0, READ_SIZE // PAGE - 1, READ_SIZE // PAGE, last]
    for page, data in changed.items():
        assert data == bytes(new[page * PAGE : (page + 1) * PAGE])
    assert len(changed[last]) == 100


def entry_of(data: bytes) -> RegionEntry:
    pages = digests(data)
    hexes = tuple(pages[i : i + 32].hex() for i in range(0, len(pages), 32))
    return RegionEntry(
        "core_text", START, len(data), hashlib.sha256(data).hexdigest(), hexes, 0, ""
    )


class Counted(Image):
    """An image that counts its reads, and serves `after` from the read numbered `switch` on:
    memory that changes while a check reads it."""

    def __init__(self, before: bytes, after: bytes, switch: int) -> None:
        super().__init__()
        self.reads, self.after, self.switch = 0, after, switch
        self.put(START, before)

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        if self.reads == self.switch:
            self.put(START, self.after)
        return super().read(address, size)


def test_an_unchanged_region_is_read_once_as_a_whole() -> None:
    old = os.urandom(2 * READ_SIZE + PAGE)
    memory = Counted(old, old, 0)
    assert changed_region(memory, entry_of(old)) == {}
    assert memory.reads == 3  # one pass: no page-by-page read


def test_a_changed_region_is_read_again_page_by_page() -> None:
    old = os.urandom(2 * READ_SIZE + PAGE)
    new = bytearray(old)
    new[READ_SIZE + 5] ^= 1
    memory = Counted(bytes(new), bytes(new), 0)
    changed = changed_region(memory, entry_of(old))
    assert changed == {READ_SIZE // PAGE: bytes(new[READ_SIZE : READ_SIZE + PAGE])}
    assert memory.reads == 6


def test_a_region_that_changes_back_while_read_is_not_called_unchanged() -> None:
    old = os.urandom(READ_SIZE + PAGE)
    new = bytearray(old)
    new[7] ^= 1
    memory = Counted(bytes(new), old, 3)  # the first pass (2 reads) sees the change, not the second
    assert changed_region(memory, entry_of(old)) is None
    memory = Counted(bytes(new), old, 3)
    assert _changed(memory, [entry_of(old)], None) == ({"core_text": {}}, [unsteady("core_text")])
