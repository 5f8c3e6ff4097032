"""integrity.changed_pages: which pages differ from the baseline's digests, across read chunks
and a short last page (on bytes laid out here; the live check tests read the kernel's)."""

from __future__ import annotations

import hashlib
import os

from support.memory_image import Image

from patchguard.integrity.baseline import PAGE
from patchguard.integrity.check import changed_pages
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
