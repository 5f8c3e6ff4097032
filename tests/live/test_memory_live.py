"""The eBPF kernel-memory reader on the running kernel."""

from __future__ import annotations

import hashlib
import threading

import pytest

from patchguard.kernel import Kernel
from patchguard.kernel.bpf.objects import all_progs
from patchguard.kernel.bpf.reader import CHUNK, GATHER, PAGE, EbpfReader
from patchguard.kernel.memory import MemoryReadError, sha256_of

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]

SWAPGS = bytes.fromhex("0f01f8")


def test_entry_syscall_64_starts_with_swapgs(kernel: Kernel) -> None:
    entry = kernel.kallsyms.address_of("entry_SYSCALL_64")
    assert entry is not None
    memory = kernel.memory()
    assert memory.name == "ebpf"
    head = memory.read(entry, 16)
    # With IBT the function may start with ENDBR64 (f3 0f 1e fa) before SWAPGS.
    assert head.startswith(SWAPGS) or head[4:].startswith(SWAPGS), head.hex()


def test_core_text_hashes_the_same_twice(kernel: Kernel) -> None:
    text = kernel.kallsyms.range("text")
    assert text is not None and text.size > 1 << 20
    memory = kernel.memory()
    first = sha256_of(memory, text.start, text.end)
    assert first == sha256_of(memory, text.start, text.end)
    # and the same bytes read in other slices hash the same: page splitting is right
    odd = hashlib.sha256()
    at = text.start
    while at < text.end:
        n = min(CHUNK + 123, text.end - at)
        odd.update(memory.read(at, n))
        at += n
    assert odd.hexdigest() == first


def test_unmapped_address_is_a_clear_error(kernel: Kernel) -> None:
    with pytest.raises(MemoryReadError, match=r"kernel memory 0x10\+0x8: bpf_probe_read_kernel"):
        kernel.memory().read(0x10, 8)


def test_many_small_reads_in_one_run_each_as_read_alone(kernel: Kernel) -> None:
    memory = kernel.memory()
    if not isinstance(memory, EbpfReader):
        pytest.skip(f"the {memory.name} reader has no gathered reads")
    text = kernel.kallsyms.range("text")
    assert text is not None
    spans = [(text.start + 4096 * i + 3 * i, 64 + 500 * i) for i in range(GATHER + 2)]
    spans[2] = (0x10, 8)  # fails alone: the others of its run are read alone too
    found = memory.read_many(spans)
    assert found[2] is None
    for (address, size), data in zip(spans, found, strict=True):
        if address != 0x10:
            assert data == memory.read(address, size)
    with pytest.raises(ValueError, match="one page at most"):
        memory.read_many([(text.start, PAGE + 1)])


def test_reader_closes_its_program() -> None:
    reader = EbpfReader.open()
    prog_id = reader.prog_id
    assert prog_id in {p.prog_id for p in all_progs()}
    reader.close()
    from support.bpfprogs import wait_gone

    assert wait_gone(prog_id)


def test_reads_from_many_threads_get_their_own_bytes(kernel: Kernel) -> None:
    # The scan reads memory from several surfaces at once; each read is a test run and a map
    # lookup on one shared map value, so without the reader's lock a thread could get bytes
    # another thread asked for (the lab saw a torn IDT gate).
    names = ("vfs_read", "vfs_write", "do_sys_openat2", "commit_creds", "schedule")
    names += ("kernel_clone", "do_exit", "do_execveat_common")
    found = [kernel.kallsyms.address_of(name) for name in names]
    places = [at for at in found if at is not None]
    memory = kernel.memory()
    expected = {at: memory.read(at, 64) for at in places}
    wrong: list[int] = []

    def worker(at: int) -> None:
        for _ in range(150):
            if memory.read(at, 64) != expected[at]:
                wrong.append(at)

    threads = [threading.Thread(target=worker, args=(at,)) for at in places]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(places) >= 6 and len(set(expected.values())) == len(places)  # they differ
    assert wrong == []


def test_mapped_value_and_lookup_read_the_same(kernel: Kernel) -> None:
    """On this kernel the reader maps its map value (BPF_F_MMAPABLE, 5.5+); the path kept for
    older kernels (MAP_LOOKUP_ELEM) reads the same bytes through the same program."""
    text = kernel.kallsyms.range("text")
    assert text is not None
    reader = EbpfReader.open()
    try:
        assert reader._value is not None, "the map value could not be mapped here"
        looked_up = EbpfReader(reader._map_fd, reader._prog_fd, None)
        for at, size in ((text.start, 64), (text.start + 4093, CHUNK + 9), (text.end - 100, 100)):
            assert looked_up.read(at, size) == reader.read(at, size), hex(at)
    finally:
        reader.close()
