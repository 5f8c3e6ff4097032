"""The netfilter hook lists read from kernel memory (patchguard.kernel.nf_hooks): the offsets
from the vmlinux BTF captured on the 6.18 "fc" machine, and the list walk over a memory image
this test lays out with those offsets. The machine's kallsyms has no data symbols, so the live
walk is proven in the lab (tests/lab/test_lab_hiding_and_entry.py: a module's hook, Debian 6.1)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.kernel.attribution import Attributor, core_ranges
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.nf_hooks import HookEntry, Layout, layout, list_entries, read_hooks
from patchguard.kernel.proc_modules import function_name, parse_proc_modules

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
HEAD = 0xFFFFFFFF82A00000  # net_namespace_list
NET = 0xFFFF888100000000  # init_net
ENTRIES = 0xFFFF888100200000
OPS = 0xFFFF888100300000


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.parse(gzip.decompress(VMLINUX.read_bytes()))


def test_layout_of_the_captured_kernel(btf: Btf) -> None:
    found = layout(btf)
    assert (found.net_list, found.net_nf, found.entries_hooks, found.ops_priority) == (
        24,
        2624,
        8,
        64,
    )
    # struct netns_nf: hooks_ipv4[5], hooks_ipv6[5], hooks_arp[3], hooks_bridge[5], in order
    assert [(pf, lists) for _, pf, lists in found.arrays] == [(2, 5), (10, 5), (3, 3), (7, 5)]
    ipv4, ipv6 = found.arrays[0][0], found.arrays[1][0]
    assert ipv6 - ipv4 == 5 * 8


def _one_namespace(offsets: Layout, hooks: list[tuple[int, int]]) -> Image:
    """init_net alone on the list, with `hooks` (function, priority) on ipv4 input."""
    image = Image()
    image.put(HEAD, struct.pack("<Q", NET + offsets.net_list))
    net = bytearray(4096)
    struct.pack_into("<Q", net, offsets.net_list, HEAD)
    struct.pack_into("<I", net, offsets.net_inum or 0, 4026531840)
    ipv4 = offsets.arrays[0][0]
    struct.pack_into("<Q", net, ipv4 + 8 * 1, ENTRIES)  # NF_INET_LOCAL_IN
    image.put(NET, bytes(net))
    entries = struct.pack("<H6x", len(hooks))
    entries += b"".join(struct.pack("<QQ", fn, 0) for fn, _ in hooks)
    entries += b"".join(struct.pack("<Q", OPS + 0x100 * i) for i in range(len(hooks)))
    image.put(ENTRIES, entries)
    for i, (_, priority) in enumerate(hooks):
        ops = bytearray(0x100)
        struct.pack_into("<i", ops, offsets.ops_priority, priority)
        image.put(OPS + 0x100 * i, bytes(ops))
    return image


SYMBOLS = SymbolTable.parse(
    f"{HEAD:016x} D net_namespace_list\n"
    "ffffffff81000000 T _stext\n"
    "ffffffff81234560 t ipv4_conntrack_in\n"
    "ffffffff81e00000 T _etext\n"
    "ffffffffc0a00000 t pg_nf_input\t[pg_nf_hook]\n"
)


def test_read_hooks_walks_every_list(btf: Btf) -> None:
    offsets = layout(btf)
    image = _one_namespace(
        offsets, [(0xFFFFFFFF81234560, -200), (0xFFFFFFFFC0A00000, -(2**31) + 7)]
    )
    found = read_hooks(image, SYMBOLS.address_of("net_namespace_list"), btf)
    assert found == [
        HookEntry(4026531840, 2, 1, -200, 0xFFFFFFFF81234560),
        HookEntry(4026531840, 2, 1, -(2**31) + 7, 0xFFFFFFFFC0A00000),
    ]


def test_implausible_list_is_refused_not_read_on(btf: Btf) -> None:
    offsets = layout(btf)
    image = _one_namespace(offsets, [])
    image.put(ENTRIES, struct.pack("<H6x", 60000))
    with pytest.raises(KernelAccessError, match="implausible count 60000"):
        list_entries(image, ENTRIES, offsets)


def test_without_data_symbols_it_says_why(btf: Btf) -> None:
    text_only = SymbolTable.parse("ffffffff81000000 T _stext\nffffffff81e00000 T _etext\n")
    with pytest.raises(KernelAccessError, match="CONFIG_KALLSYMS_ALL"):
        read_hooks(Image(), text_only.address_of("net_namespace_list"), btf)


def _names(modules: str) -> Attributor:
    listed = parse_proc_modules(modules)
    ranges = {m.name: [(m.address or 0, (m.address or 0) + m.size)] for m in listed}
    return Attributor(SYMBOLS, core_ranges(SYMBOLS), ranges, None)


def test_functions_are_named_by_the_symbol_whose_extent_holds_them() -> None:
    listed = _names("pg_nf_hook 16384 0 - Live 0xffffffffc0a00000 (OE)\n")
    assert function_name(0xFFFFFFFF81234560, listed) == ("ipv4_conntrack_in", None)
    assert function_name(0xFFFFFFFFC0A00000, listed) == ("pg_nf_input", "pg_nf_hook")
    # the module is not listed (it hid itself): only the address is left
    assert function_name(0xFFFFFFFFC0A00000, _names("")) == ("0xffffffffc0a00000", None)
    # beyond every listed module, in memory no symbol covers
    assert function_name(0xFFFFFFFFC0B00000, listed) == ("0xffffffffc0b00000", None)
