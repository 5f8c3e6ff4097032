"""Every tracepoint read from memory: core ones from their iterators' first load, a module's
from its struct module's prel32 list, and what each probe's data names (a raw tracepoint's
link or program, a perf event's programs), over a memory image laid out with the captured
6.18 BTF's offsets (the live and lab tests read real ones)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.kernel.btf import Btf
from patchguard.kernel.tracepoint_list import (
    core_tracepoints,
    iterator_names,
    module_offsets,
    module_tracepoints,
    spans,
)
from patchguard.kernel.tracepoint_owners import (
    OwnerLayout,
    owner_layout,
    perf_progs,
    raw_tracepoint_prog,
)
from patchguard.kernel.tracepoints import Layout, Probe, layout, read_probes

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
TEXT = 0xFFFFFFFF81000000
ITER_A, ITER_B = TEXT + 0x100, TEXT + 0x180
DATA = 0xFFFFFFFF82A00000
TP_A, TP_B = DATA, DATA + 0x80
FUNCS = 0xFFFF888100000000
PROBE, GLUE = TEXT + 0x2000, TEXT + 0x2100
HEAP = 0xFFFF888200000000


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.parse(gzip.decompress(VMLINUX.read_bytes()))


@pytest.fixture(scope="module")
def lay(btf: Btf) -> Layout:
    found = layout(btf)
    assert found is not None
    return found


def iterator_code(at: int, loads: int) -> bytes:
    """endbr64; nop5 (ftrace); push rbx; mov rbx, [rip+disp] -> loads; ..."""
    head = bytes.fromhex("f30f1efa") + bytes.fromhex("0f1f440000") + b"\x53"
    disp = loads - (at + len(head) + 7)
    return head + b"\x48\x8b\x1d" + struct.pack("<i", disp) + b"\xcc" * 40


def tp_struct(lay: Layout, iterator: int, funcs: int) -> list[int]:
    assert lay.iterator is not None
    words = [0] * (lay.size // 8 + 1)
    words[lay.iterator // 8], words[lay.funcs // 8] = iterator, funcs
    return words


def probe_array(lay: Layout, *probes: Probe) -> bytes:
    out = b""
    for p in (*probes, Probe(0, 0, 0)):
        entry = bytearray(lay.func_size)
        struct.pack_into("<QQ", entry, 0, p.func, p.data)
        struct.pack_into("<i", entry, lay.prio, p.prio)
        out += bytes(entry)
    return out


def core_image(lay: Layout, funcs_tail: int = 0) -> Image:
    mem = Image()
    mem.put(ITER_A, iterator_code(ITER_A, TP_A + lay.funcs))
    mem.put(ITER_B, iterator_code(ITER_B, TP_B + lay.funcs))
    mem.put_words(TP_A, *tp_struct(lay, ITER_A, FUNCS))
    mem.put_words(TP_B, *tp_struct(lay, ITER_A, 0))  # points at A's iterator: not B
    array = probe_array(lay, Probe(PROBE, HEAP, 10), Probe(GLUE, HEAP + 8, -5))
    mem.put(FUNCS, array + b"\0" * funcs_tail)
    return mem


def test_near_addresses_share_a_read_and_far_ones_do_not() -> None:
    assert list(spans([0x1000, 0x1100, 0x1040], 0x40)) == [(0x1000, 0x1140)]
    assert list(spans([0x1000, 0x9000], 0x40)) == [(0x1000, 0x1040), (0x9000, 0x9040)]


def test_core_tracepoints_are_found_from_their_iterators_and_proven(lay: Layout) -> None:
    iterators = iterator_names([("__traceiter_a", ITER_A), ("__traceiter_b", ITER_B)])
    (tp,) = core_tracepoints(core_image(lay, 4096), lay, iterators)
    assert (tp.name, tp.address) == ("a", TP_A)
    assert tp.entries == (Probe(PROBE, HEAP, 10), Probe(GLUE, HEAP + 8, -5))


def test_a_probe_array_at_the_end_of_its_mapping_is_read_entry_by_entry(lay: Layout) -> None:
    mem = core_image(lay)  # nothing mapped past the terminating entry
    assert read_probes(mem, lay, FUNCS) == (Probe(PROBE, HEAP, 10), Probe(GLUE, HEAP + 8, -5))
    assert read_probes(mem, lay, 0) == ()


def test_a_module_lists_its_tracepoints_as_prel32_offsets(btf: Btf, lay: Layout) -> None:
    at = module_offsets(btf)
    assert at is not None
    module, table, tp, name = HEAP + 0x1000, HEAP + 0x3000, HEAP + 0x4000, HEAP + 0x5000
    mem = Image()
    raw = bytearray(max(at.tracepoints_ptrs, at.num_tracepoints) + 8)
    struct.pack_into("<Q", raw, at.tracepoints_ptrs, table)
    struct.pack_into("<I", raw, at.num_tracepoints, 1)
    mem.put(module, bytes(raw))
    mem.put(table, struct.pack("<i", tp - table) + b"\0" * 60)
    tp_words = tp_struct(lay, 0, FUNCS)
    tp_words[lay.name // 8] = name
    mem.put_words(tp, *tp_words)
    mem.put(name, b"mod_event\0" + b"x" * 200)
    mem.put(FUNCS, probe_array(lay, Probe(PROBE, 0, 10)) + b"\0" * 4096)
    (found,) = module_tracepoints(mem, lay, at, module)
    assert (found.name, found.address, found.probes) == ("mod_event", tp, (PROBE,))


@pytest.fixture(scope="module")
def owners(btf: Btf) -> OwnerLayout:
    found = owner_layout(btf)
    assert found is not None and found.call_progs is not None
    return found


def put_prog(mem: Image, at: OwnerLayout, prog: int, aux: int, prog_id: int) -> None:
    raw = bytearray(max(at.prog_aux, at.prog_tag) + 16)
    struct.pack_into("<Q", raw, at.prog_aux, aux)
    raw[at.prog_tag : at.prog_tag + 8] = bytes(range(1, 9))
    mem.put(prog, bytes(raw))
    aux_raw = bytearray(max(at.aux_back, at.aux_name, at.aux_id) + 16)
    struct.pack_into("<Q", aux_raw, at.aux_back, prog)
    struct.pack_into("<I", aux_raw, at.aux_id, prog_id)
    aux_raw[at.aux_name : at.aux_name + 6] = b"pg_tp\0"
    mem.put(aux, bytes(aux_raw))


def test_a_raw_tracepoint_names_its_program_through_a_link_or_directly(
    owners: OwnerLayout,
) -> None:
    mem, link, prog, aux = Image(), HEAP, HEAP + 0x1000, HEAP + 0x2000
    put_prog(mem, owners, prog, aux, 42)
    mem.put_words(link, *([0] * (owners.link_prog // 8) + [prog]))
    by_link = raw_tracepoint_prog(mem, owners, link)
    assert by_link is not None and str(by_link) == "BPF prog 42 pg_tp tag 0102030405060708"
    assert raw_tracepoint_prog(mem, owners, prog) == by_link  # 6.1: the program itself
    assert raw_tracepoint_prog(mem, owners, aux) is None  # no program leads back from it


def test_a_perf_event_names_the_programs_of_its_prog_array(owners: OwnerLayout) -> None:
    assert owners.call_progs is not None
    mem, call, array = Image(), HEAP + 0x5000, HEAP + 0x6000
    put_prog(mem, owners, HEAP, HEAP + 0x1000, 7)
    put_prog(mem, owners, HEAP + 0x2000, HEAP + 0x3000, 8)
    mem.put_words(call, *([0] * (owners.call_progs // 8) + [array]))
    items = bytearray(owners.array_items + owners.item_size * 3)
    struct.pack_into("<Q", items, owners.array_items, HEAP)
    struct.pack_into("<Q", items, owners.array_items + owners.item_size, HEAP + 0x2000)
    mem.put(array, bytes(items))
    assert [p.prog_id for p in perf_progs(mem, owners, call)] == [7, 8]
    assert perf_progs(mem, owners, 0) == ()
