"""Who registered each kprobe, walked from kprobe_table (patchguard.kernel.kprobe_table) over a
memory image laid out with the offsets of the captured 6.18 BTF (struct kprobe) and Debian
6.1's struct kretprobe (kp at 0, handler at 96, entry_handler at 104). This machine has no
kprobes; the lab proves the walk on the real table (test_lab_function_hooks.py)."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.kprobe_table import KprobeHandler, Layout, _Walk, layout

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
TABLE = 0xFFFFFFFF82B00000
AGGR, KRET = 0xFFFFFFFF81100000, 0xFFFFFFFF81100100
SYMBOLS = SymbolTable.parse(
    f"{TABLE:016x} b kprobe_table\n{AGGR:016x} t aggr_pre_handler\n"
    f"{KRET:016x} t pre_handler_kretprobe\n"
)
PROBED = 0xFFFFFFFF810C5A40  # commit_creds
HANDLER_A, HANDLER_B, RET = 0xFFFFFFFFC0400000, 0xFFFFFFFFC0400100, 0xFFFFFFFFC0500000


@pytest.fixture(scope="module")
def offsets() -> Layout:
    found = layout(Btf.parse(gzip.decompress(VMLINUX.read_bytes())))
    assert (found.hlist, found.list, found.addr, found.pre_handler) == (0, 16, 40, 64)
    assert found.kretprobe_kp is None  # this kernel has no kretprobes
    return replace(found, kretprobe_kp=0, kretprobe_handler=96, kretprobe_entry=104)


def kprobe(image: Image, at: int, o: Layout, *, addr: int, pre: int, nxt: int = 0) -> None:
    words = [0] * 16
    words[o.hlist // 8] = nxt
    words[o.addr // 8] = addr
    words[o.pre_handler // 8] = pre
    image.put_words(at, *words)


def test_plain_aggregate_and_kretprobe(offsets: Layout) -> None:
    image = Image()
    buckets = [0] * 64
    aggr, child_a, child_b, rp = (0xFFFF888100000000 + n * 0x1000 for n in range(4))
    buckets[3], buckets[9] = aggr, rp
    image.put_words(TABLE, *buckets)
    # the aggregate probe: its list holds the two real kprobes
    kprobe(image, aggr, offsets, addr=PROBED, pre=AGGR)
    kprobe(image, child_a, offsets, addr=PROBED, pre=HANDLER_A)
    kprobe(image, child_b, offsets, addr=PROBED, pre=HANDLER_B)
    lists = {aggr: child_a, child_a: child_b, child_b: aggr}  # list_head.next around the ring
    for node, nxt in lists.items():
        image.blocks[node] = patch_word(image.blocks[node], offsets.list, nxt + offsets.list)
    kprobe(image, rp, offsets, addr=PROBED + 5, pre=KRET)
    image.blocks[rp] = patch_word(image.blocks[rp], 96, RET)
    walk = _Walk(image, SYMBOLS, offsets)
    for bucket in range(64):
        walk.bucket(TABLE + 8 * bucket)
    assert walk.found == [
        KprobeHandler(PROBED, HANDLER_A, "kprobe"),
        KprobeHandler(PROBED, HANDLER_B, "kprobe"),
        KprobeHandler(PROBED + 5, RET, "kretprobe"),
    ]


def patch_word(block: bytes, offset: int, value: int) -> bytes:
    return block[:offset] + value.to_bytes(8, "little") + block[offset + 8 :]


def test_a_looping_list_is_refused(offsets: Layout) -> None:
    image = Image()
    node = 0xFFFF888100000000
    image.put_words(TABLE, node, *([0] * 63))
    kprobe(image, node, offsets, addr=PROBED, pre=HANDLER_A, nxt=node)  # next points at itself
    with pytest.raises(KernelAccessError, match="implausible list"):
        _Walk(image, SYMBOLS, offsets).bucket(TABLE)
