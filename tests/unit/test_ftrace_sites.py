"""The baseline-free ftrace-site check: ftrace's records walked over memory laid out with the
6.18 vmlinux BTF offsets, the first load of ftrace_rec_iter_start() as the 6.18.44-fc machine
has it, and site bytes crafted for each case (a khook-style JMP, a CALL into a stub, what ftrace
writes)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_records import (
    FL_DISABLED,
    RecordLayout,
    first_rip_load,
    layout,
    site_addresses,
    sites_of,
)
from patchguard.surfaces.ftrace_sites import FtraceSites, findings, judge, site_code
from patchguard.x86.insn import NOP5

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
HEAD = 0xFFFFFFFF83984038  # ftrace_pages_start on the 6.18.44-fc machine
PAGE1, PAGE2 = 0xFFFF888100001000, 0xFFFF888100002000
RECORDS1, RECORDS2 = 0xFFFF888100010000, 0xFFFF888100020000
CALLER = 0xFFFFFFFF813389A0  # ftrace_caller
SITE = 0xFFFFFFFF81398B70


@pytest.fixture(scope="module")
def offsets() -> RecordLayout:
    return layout(Btf.parse(gzip.decompress(VMLINUX.read_bytes())))


def test_the_first_load_of_the_iterator_is_the_list_head() -> None:
    # ftrace_rec_iter_start() of 6.18.44-fc: mov rax, [rip+0x24ed881]; mov dword [rip+..], 0
    code = bytes.fromhex("488b0581d84e02c70557d84e0200000000")
    assert first_rip_load(code, 0xFFFFFFFF814967B0) == HEAD
    assert first_rip_load(bytes.fromhex("c70557d84e0200000000c3"), 0xFFFFFFFF814967B0) is None


def _pages(offsets: RecordLayout, counts: tuple[int, int]) -> Image:
    image = Image()
    image.put_words(HEAD, PAGE1)
    for page, records, nxt, count in (
        (PAGE1, RECORDS1, PAGE2, counts[0]),
        (PAGE2, RECORDS2, 0, counts[1]),
    ):
        raw = bytearray(64)
        struct.pack_into("<Q", raw, offsets.next, nxt)
        struct.pack_into("<Q", raw, offsets.records, records)
        struct.pack_into("<i", raw, offsets.index, count)
        image.put(page, bytes(raw))
        recs = bytearray(offsets.record_size * count)
        for i in range(count):
            struct.pack_into("<Q", recs, i * offsets.record_size + offsets.ip, SITE + 0x40 * i)
        image.put(records, bytes(recs))
    return image


def test_every_record_of_every_page_is_a_site(offsets: RecordLayout) -> None:
    assert offsets.record_size == 16  # struct dyn_ftrace: ip, flags (x86 has no arch part)
    image = _pages(offsets, (3, 2))
    sites = site_addresses(image, HEAD, offsets)
    assert sites == [SITE, SITE + 0x40, SITE + 0x80, SITE, SITE + 0x40]
    # a record ftrace disabled (an overridden __weak function's site) says so
    raw = bytearray(image.read(RECORDS1, 3 * offsets.record_size))
    struct.pack_into("<Q", raw, offsets.record_size + offsets.flags, FL_DISABLED)
    image.put(RECORDS1, bytes(raw))
    assert sites_of(image, HEAD, offsets).disabled == {SITE + 0x40}


def test_an_implausible_page_is_refused(offsets: RecordLayout) -> None:
    image = _pages(offsets, (70000, 0))
    with pytest.raises(KernelAccessError, match="70000 records"):
        site_addresses(image, HEAD, offsets)


def _rel(op: int, site: int, dest: int) -> bytes:
    return bytes([op]) + struct.pack("<i", dest - (site + 5))


def test_what_ftrace_writes_passes_and_anything_else_is_a_hook() -> None:
    allowed = frozenset({CALLER, 0xFFFFFFFFC0201000})
    stub = 0xFFFFFFFFC0414040
    assert judge(NOP5, SITE, allowed) == (True, None)
    assert judge(_rel(0xE8, SITE, CALLER), SITE, allowed) == (True, CALLER)
    assert judge(_rel(0xE8, SITE, 0xFFFFFFFFC0201000), SITE, allowed)[0]
    # khook: a JMP over the entry into a stub; a CALL into a stub; a trampoline's JMP
    assert judge(_rel(0xE9, SITE, stub), SITE, allowed) == (False, stub)
    assert judge(_rel(0xE8, SITE, stub), SITE, allowed) == (False, stub)
    assert judge(_rel(0xE9, SITE, CALLER), SITE, allowed) == (False, CALLER)
    assert judge(bytes.fromhex("ff25000000"), SITE, allowed) == (False, None)
    assert judge(bytes.fromhex("5548 89e5 41"), SITE, allowed) == (False, None)


def test_site_bytes_come_from_the_text_read_or_one_read_per_page() -> None:
    text = bytes(range(256)) * 16
    reads: list[tuple[int, int]] = []
    module_page = 0xFFFFFFFFC0400000

    def read(address: int, size: int) -> bytes:
        reads.append((address, size))
        return bytes([0xAA]) * size

    sites = [0xFFFFFFFF81000010, module_page + 0x10, module_page + 0x80, module_page + 0xFFE]
    codes = site_code(sites, text, 0xFFFFFFFF81000000, read)
    assert codes[0xFFFFFFFF81000010] == bytes(range(0x10, 0x15))
    assert codes[module_page + 0x80] == b"\xaa" * 5
    # one read for the page, one for the site that crosses into the next page
    assert reads == [(module_page, 4096), (module_page + 0xFFE, 5)]


def test_functions_kallsyms_does_not_list_are_a_lying_view_or_a_hidden_module() -> None:
    state = FtraceSites(
        48031,
        0,
        "ftrace_pages_start",
        unlisted=3,
        unlisted_named=("ftrace_trampoline+0x0 [__builtin__ftrace]",),
        unlisted_unnamed=("0xffffffffc0420010 (memory of no listed module; ...)",),
    )
    lying, hidden = findings("kernel_text", state)
    assert lying.technique == "filtered-view" and lying.subject == "/proc/kallsyms"
    assert "lists no function at 3 of the 48031 ftrace sites" in lying.summary
    assert hidden.technique == "hidden-module" and "0xffffffffc0420010" in hidden.summary
    assert findings("kernel_text", FtraceSites(10, 0, "x")) == []
