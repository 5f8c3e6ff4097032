"""The ftrace sites' bytes taken from the core text as it streams by in chunks (SiteBytes),
against the same bytes sliced from the whole text (site_code): the same sites and bytes, in the
records' order, whatever the chunk boundaries cut."""

from __future__ import annotations

import random

import pytest

from patchguard.surfaces.ftrace_sites import site_code
from patchguard.surfaces.kernel_text import SiteBytes
from patchguard.x86.insn import NOP5

START = 0xFFFFFFFF81000000


def _text(sites: list[int], size: int, seed: int) -> bytes:
    """Random bytes, NOP5 at all but every 7th site (what ftrace leaves most sites holding)."""
    text = bytearray(random.Random(seed).randbytes(size))
    for n, site in enumerate(sites):
        if n % 7:
            text[site - START : site - START + 5] = NOP5
    return bytes(text)


def _no_read(address: int, size: int) -> bytes:
    raise AssertionError(f"a site inside the text was read from memory: {address:#x}+{size}")


def _streamed(sites: list[int], text: bytes, chunk: int) -> dict[int, bytes]:
    taken = SiteBytes(sites, START, START + len(text))
    for at in range(0, len(text), chunk):
        taken.feed(START + at, text[at : at + chunk])
    return taken.codes(memory=None)  # type: ignore[arg-type]  # every site is inside


@pytest.mark.parametrize("chunk", [4096, 4093, 1000, 7, 5])
def test_streamed_sites_are_the_sliced_ones(chunk: int) -> None:
    size = 3 * 4096 + 17
    rng = random.Random(chunk)
    sites = sorted(rng.sample(range(START, START + size - 5, 3), 400))
    # sites on every boundary a chunk can cut: 1 to 4 bytes before it, and on it
    cut = {START + b - k for b in range(chunk, size, chunk) for k in range(5)}
    sites = sorted(set(sites) | cut)
    sites = [s for s in sites if s <= START + size - 5]
    text = _text(sites, size, chunk)
    expected = site_code(sites, text, START, _no_read, skip=NOP5)
    found = _streamed(sites, text, chunk)
    assert found == expected
    assert list(found) == list(expected)  # the records' order
    assert len(found) > 50


def test_records_out_of_order_keep_their_order() -> None:
    size = 8192
    sites = random.Random(1).sample(range(START, START + size - 5, 5), 300)  # not sorted
    text = _text(sites, size, 2)
    expected = site_code(sites, text, START, _no_read, skip=NOP5)
    found = _streamed(sites, text, 1000)
    assert list(found.items()) == list(expected.items())
