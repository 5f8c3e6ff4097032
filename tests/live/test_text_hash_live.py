"""Keyed page digests computed in the kernel (kernel/bpf/text_hash.py) and the guard's sweeps
built on them (integrity/keyed_pages.py), on the running kernel.

The digests are checked against the Python reference of NH over the same bytes read by the
memory reader. Kernel memory that this test can change is the value of a BPF array map the
test creates: a two-instruction program stores the value's kernel address into the value
itself (root may read pointers), and the value is mapped here, so a byte written through
the mapping is a byte of kernel memory that a sweep must see move."""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchguard.findings import Disposition
from patchguard.integrity.check import CheckOutcome, changed_pages, verify
from patchguard.integrity.keyed_pages import KeyedPages, Swept
from patchguard.integrity.module_regions import live_modules, module_listing
from patchguard.integrity.store import BaselineError, file_stamp
from patchguard.kernel import Kernel
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import R0, R1, exit_insn, ld_map_value, mov64_imm, stx_mem
from patchguard.kernel.bpf.objects import all_progs
from patchguard.kernel.bpf.text_hash import CHUNK_PAGES, PAGE, RANGES, TextHasher, nh
from patchguard.signing import HostKey

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]

RAW_TRACEPOINT = 17
PAGES = 3


def unexplained(outcome: CheckOutcome) -> list[str]:
    return [f.subject for f in outcome.findings if f.disposition != Disposition.EXPLAINED]


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def hasher() -> Iterator[TextHasher]:
    h = TextHasher()
    try:
        yield h
    finally:
        h.close()


def test_digests_are_nh_of_the_pages_under_both_keys(kernel: Kernel, hasher: TextHasher) -> None:
    text = kernel.kallsyms.range("text")
    assert text is not None
    start = text.start + 64 * PAGE
    digests = hasher.hash_range(start, start + 4 * PAGE)
    key_a, key_b = hasher.keys()
    for i, (a, b) in enumerate(digests):
        page = kernel.memory().read(start + i * PAGE, PAGE)
        assert (a, b) == (nh(page, key_a), nh(page, key_b))


def test_one_key_digests_are_nh_under_it_in_both_columns(
    kernel: Kernel, hasher: TextHasher
) -> None:
    text = kernel.kallsyms.range("text")
    assert text is not None
    before = hasher.hash_range(text.start, text.start + 3 * PAGE)
    key = hasher.keep_key()
    assert (key, key) == hasher.keys()
    after = hasher.hash_range(text.start, text.start + 3 * PAGE)
    for i, (a, b) in enumerate(after):
        page = kernel.memory().read(text.start + i * PAGE, PAGE)
        assert a == b == nh(page, key)
    assert [a for a, _ in after] == [b for _, b in before]  # the kept key is the last B


def test_new_keys_chain_a_to_the_last_b(kernel: Kernel, hasher: TextHasher) -> None:
    text = kernel.kallsyms.range("text")
    assert text is not None
    before = hasher.hash_range(text.start, text.start + 8 * PAGE)
    hasher.new_keys()
    after = hasher.hash_range(text.start, text.start + 8 * PAGE)
    assert [a for a, _ in after] == [b for _, b in before]
    assert [b for _, b in after] != [b for _, b in before]  # a fresh key B


def test_the_whole_core_text_hashes_and_the_program_is_patchguards(
    kernel: Kernel, hasher: TextHasher
) -> None:
    text = kernel.kallsyms.range("text")
    assert text is not None
    digests = hasher.hash_range(text.start, text.end)
    assert len(digests) == -(-text.size // PAGE)
    assert hasher.prog_id in {p.prog_id for p in all_progs()}


def test_many_ranges_in_one_run_each_hashed_and_a_fault_only_fails_its_own(
    kernel: Kernel, hasher: TextHasher
) -> None:
    text = kernel.kallsyms.range("text")
    assert text is not None
    ranges = [(text.start + 7 * PAGE, 2), (0x10, 1), (text.start, 3), (text.start + PAGE, 1)]
    statuses = hasher.hash_ranges(ranges)
    assert statuses[1] < 0 and statuses[:1] + statuses[2:] == [0, 0, 0]
    digests, key_a, at = hasher.digests(7), hasher.keys()[0], 0
    for (start, pages), status in zip(ranges, statuses, strict=True):
        for i in range(pages):
            if status == 0:
                page = kernel.memory().read(start + i * PAGE, PAGE)
                assert digests[at + i][0] == nh(page, key_a)
                assert bytes(hasher.copy(at + i + 1)[(at + i) * PAGE :]) == page
        at += pages


def test_gather_copies_each_span_and_hashes_nothing(kernel: Kernel, hasher: TextHasher) -> None:
    text = kernel.kallsyms.range("text")
    assert text is not None
    before = hasher.hash_range(text.start, text.start + PAGE)
    spans = [(text.start + 5, 100), (0x10, 8), (text.start + 3 * PAGE - 7, 20)]
    found = hasher.gather(spans)
    assert found[1] is None
    for (address, size), data in zip(spans[::2], found[::2], strict=True):
        assert data == kernel.memory().read(address, size)
    assert hasher.digests(1) == before  # no page hashed: the digests are the last run's


def test_a_run_refuses_more_than_it_holds(hasher: TextHasher) -> None:
    with pytest.raises(ValueError, match="more than one run holds"):
        hasher.hash_ranges([(0x10, CHUNK_PAGES), (0x10, 1)])
    with pytest.raises(ValueError, match="more than one run holds"):
        hasher.gather([(0x10, 8)] * (RANGES + 1))


# --- kernel memory this test can change: a BPF array map's value -------------------------------


class MapValue:
    """A mapped array-map value and its kernel address."""

    def __init__(self, pages: int = PAGES) -> None:
        size = pages * PAGE
        self.fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, size, 1, "pg_t_hashed", 1 << 10)
        self.view = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        prog = ld_map_value(R1, self.fd, 0) + stx_mem(8, R1, R1, 0) + mov64_imm(R0, 0)
        prog_fd = bpf.prog_load(RAW_TRACEPOINT, prog + exit_insn(), "pg_t_addr")
        try:
            bpf.prog_test_run(prog_fd, struct.pack("<Q", 0))
        finally:
            os.close(prog_fd)
        self.address = struct.unpack_from("<Q", self.view, 0)[0]
        self.view[:] = os.urandom(size)

    def page_digests(self) -> bytes:
        return b"".join(
            hashlib.sha256(self.view[i : i + PAGE]).digest() for i in range(0, len(self.view), PAGE)
        )

    def close(self) -> None:
        self.view.close()
        os.close(self.fd)


@pytest.fixture
def value() -> Iterator[MapValue]:
    v = MapValue()
    try:
        yield v
    finally:
        v.close()


@pytest.mark.parametrize("rotate_every", [1, 2, 8])  # a fresh key every sweep .. one key
def test_sweeps_see_a_changed_byte_and_only_it_is_hashed_again(
    kernel: Kernel, value: MapValue, rotate_every: int
) -> None:
    keyed = KeyedPages.open(kernel, rotate_every)
    assert keyed is not None
    try:
        baseline = value.page_digests()
        size, memory = PAGES * PAGE, kernel.memory()

        def sweep() -> dict[int, bytes]:
            keyed.begin_sweep()
            return keyed.changed_pages(memory, value.address, baseline, size)

        assert sweep() == {} and keyed.counts.hashed == PAGES  # the first sweep: SHA-256 all
        assert sweep() == {} and keyed.counts.hashed == 0  # nothing moved: nothing hashed
        value.view[PAGE + 5] ^= 0xFF
        changed = sweep()
        assert list(changed) == [1] and keyed.counts.hashed == 1
        assert changed[1] == bytes(value.view[PAGE : 2 * PAGE])
        # the verdict stands while the page stays as it is, bytes and all, hashing nothing
        assert sweep() == changed and keyed.counts.hashed == 0
        assert changed == changed_pages(memory, value.address, baseline, size)
        value.view[PAGE + 5] ^= 0xFF  # put back: the page matches the baseline again
        assert sweep() == {} and keyed.counts.hashed == 1
    finally:
        keyed.close()


def test_regions_swept_together_each_see_only_their_own_change(kernel: Kernel) -> None:
    """Map values of 3, CHUNK_PAGES + 44 (more than one run holds), 3 and 3 pages in one
    sweep: two runs, and a byte changed in one value is that value's change alone."""
    big = CHUNK_PAGES + 44
    values = [MapValue(pages) for pages in (3, big, 3, 3)]
    keyed = KeyedPages.open(kernel)
    assert keyed is not None
    try:
        regions = [Swept(v.address, v.page_digests(), len(v.view)) for v in values]
        memory = kernel.memory()

        def sweep() -> list[dict[int, bytes]]:
            keyed.begin_sweep()
            return keyed.changed_regions(memory, regions)

        assert sweep() == [{}] * 4 and keyed.counts.runs == 2
        assert keyed.counts.hashed == big + 9
        values[3].view[2 * PAGE + 9] ^= 0x01
        values[1].view[(CHUNK_PAGES + 1) * PAGE] ^= 0x80  # in the second run
        changed = sweep()
        assert changed[0] == changed[2] == {} and list(changed[1]) == [CHUNK_PAGES + 1]
        assert list(changed[3]) == [2] and changed[3][2] == bytes(values[3].view[2 * PAGE :])
        page = (CHUNK_PAGES + 1) * PAGE
        assert changed[1][CHUNK_PAGES + 1] == bytes(values[1].view[page : page + PAGE])
        assert keyed.counts.hashed == 2 and keyed.counts.pages == big + 9
    finally:
        keyed.close()
        for v in values:
            v.close()


def test_a_region_that_comes_or_goes_leaves_the_others_chained(kernel: Kernel) -> None:
    """A module loaded or unloaded changes the sweep's regions (a new plan, other slots): the
    regions that stay keep their chain and their verdicts, and only the new one is judged
    whole."""
    values = [MapValue(pages) for pages in (3, 5, 2)]
    keyed = KeyedPages.open(kernel)
    assert keyed is not None
    try:
        regions = [Swept(v.address, v.page_digests(), len(v.view)) for v in values]
        memory = kernel.memory()

        def sweep(*which: int) -> list[dict[int, bytes]]:
            keyed.begin_sweep()
            return keyed.changed_regions(memory, [regions[i] for i in which])

        assert sweep(0, 2) == [{}, {}] and keyed.counts.hashed == 5
        values[2].view[PAGE + 1] ^= 0x10
        changed = sweep(1, 0, 2)  # region 1 comes, before the others: their slots move
        assert changed[:2] == [{}, {}] and list(changed[2]) == [1]
        assert keyed.counts.hashed == 5 + 1  # region 1 whole, and the moved page
        assert sweep(0, 2) == [{}, changed[2]] and keyed.counts.hashed == 0  # 1 goes
    finally:
        keyed.close()
        for v in values:
            v.close()


def test_a_carried_collision_ends_at_the_pages_turn_to_be_rechecked(
    kernel: Kernel, value: MapValue
) -> None:
    """An NH collision cannot be found without the key, so this test, which has it, forges
    one: after a byte changes, the digest the last sweep kept for that page is set to the
    changed page's own, so the next sweep sees it unmoved and carries the clean verdict. The
    rolling recheck SHA-256s it at its turn (within 4 sweeps here) and says the change."""
    keyed = KeyedPages.open(kernel, recheck_every=4)
    assert keyed is not None
    try:
        size, memory, baseline = PAGES * PAGE, kernel.memory(), value.page_digests()

        def sweep() -> dict[int, bytes]:
            keyed.begin_sweep()
            return keyed.changed_pages(memory, value.address, baseline, size)

        assert sweep() == {}
        value.view[PAGE + 100] ^= 0x40
        key = keyed._hasher.keys()[1]  # the key the next sweep keeps
        state = keyed._state
        assert state is not None  # kept: the digest under the next key A, 8 bytes a page
        struct.pack_into("<Q", state.digests, 8, nh(bytes(value.view[PAGE : 2 * PAGE]), key))
        turn = next(s for s in range(2, 6) if (s - value.address // PAGE - 1) % 4 == 0)
        for number in range(2, 7):
            changed = sweep()
            assert list(changed) == ([1] if number >= turn else []), number
            assert keyed.counts.hashed == 0  # never moved: found by the recheck alone
    finally:
        keyed.close()


def test_a_skipped_sweep_or_a_new_baseline_is_judged_whole(kernel: Kernel, value: MapValue) -> None:
    keyed = KeyedPages.open(kernel)
    assert keyed is not None
    try:
        size, memory = PAGES * PAGE, kernel.memory()
        baseline = value.page_digests()
        keyed.begin_sweep()
        keyed.changed_pages(memory, value.address, baseline, size)
        keyed.begin_sweep()  # a sweep that did not look at this region
        keyed.begin_sweep()
        assert keyed.changed_pages(memory, value.address, baseline, size) == {}
        assert keyed.counts.hashed == PAGES
        other = bytes(32) + baseline[32:]  # another baseline: page 0 differs from it
        keyed.begin_sweep()
        assert list(keyed.changed_pages(memory, value.address, other, size)) == [0]
        assert keyed.counts.hashed == PAGES
    finally:
        keyed.close()


def test_verify_with_sweeps_hashed_in_the_kernel_equals_verify(
    kernel: Kernel, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PATCHGUARD_KEY": str(tmp_path / "host.key"),
        "PATCHGUARD_BASELINE": str(tmp_path / "baseline.zip"),
    }
    made = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "baseline", "create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    public = HostKey.load(tmp_path / "host.key").public_key_bytes()
    keyed = KeyedPages.open(kernel)
    assert keyed is not None
    try:
        path = tmp_path / "baseline.zip"
        plain = verify(kernel, path, public)
        for _ in range(3):
            swept = verify(kernel, path, public, keyed)
            # other software may flip a static key between two checks (explained changes)
            assert swept.state.counts["pages"] == plain.state.counts["pages"]
            assert unexplained(swept) == unexplained(plain) == []
        assert keyed.counts.pages > 0 and keyed.counts.hashed < keyed.counts.pages
        assert keyed.verified_manifest(file_stamp(path), public) is not None
        assert keyed.verified_manifest(file_stamp(path), bytes(32)) is None  # another key
        # the stored streams are verified again once the file is another: one flipped byte
        with zipfile.ZipFile(path) as zf:
            members = [(i, zf.read(i)) for i in zf.infolist()]
        with zipfile.ZipFile(path, "w") as zf:
            for info, data in members:
                flip = info.filename == "regions/core_text.zlib"
                zf.writestr(info, data[:99] + bytes([data[99] ^ 1]) + data[100:] if flip else data)
        with pytest.raises(BaselineError, match="stored data does not match its manifest"):
            verify(kernel, path, public, keyed)
    finally:
        keyed.close()


# --- modules (the lab's guest has them; these machines have none) -----------------------------


def test_sweeps_read_proc_modules_as_a_check_does_through_one_kept_descriptor(
    kernel: Kernel,
) -> None:
    keyed = KeyedPages.open(kernel)
    assert keyed is not None
    try:
        for _ in range(2):  # the second read: the same descriptor, from offset 0 again
            assert keyed._module_listing(kernel) == module_listing(kernel)
    finally:
        keyed.close()
    assert keyed._listing_fd is None


def test_sweeps_find_every_module_as_check_does_and_keep_where_they_are(kernel: Kernel) -> None:
    kernel.refresh()
    plain = live_modules(kernel)  # the struct modules gathered by the memory reader
    if not plain.modules:
        pytest.skip("no loaded modules here (the lab's guest has them)")
    assert live_modules(kernel, gather=lambda spans: [None] * len(spans)) == plain  # one each
    keyed = KeyedPages.open(kernel)
    assert keyed is not None
    try:
        first = keyed.live_modules(kernel)  # the first: looked up in kallsyms
        assert first == plain
        kernel.refresh()
        assert keyed.live_modules(kernel) is first  # /proc/modules as it was: nothing read
        keyed._modules = None  # as if /proc/modules changed (a refcount, say)
        assert keyed.live_modules(kernel) == plain
        assert kernel._kallsyms is None  # structs where they were: not one kallsyms read
        # a struct module no longer where it was kept (reloaded elsewhere, say): looked up
        known = keyed._module_structs
        name = sorted(known)[0]
        known[name] = (known[name][0], known[name][1] + 8)
        keyed._modules = None
        assert keyed.live_modules(kernel) == plain
        assert known[name][1] == plain.modules[name].module
    finally:
        keyed.close()
