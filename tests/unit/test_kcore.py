"""KcoreReader on hand-built ELF64 core files (struct.pack: pyelftools only reads ELF)."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kcore import KcoreReader, KcoreSegment
from patchguard.kernel.memory import KernelMemory, MemoryReadError

ET_CORE, ET_EXEC = 4, 2
PT_LOAD, PT_NOTE = 1, 4
ELF64_EHDR = "<16sHHIQQQIHHHHHH"  # 64 bytes
ELF64_PHDR = "<IIQQQQQQ"  # 56 bytes

TEXT = 0xFFFFFFFF81000000  # _stext on x86_64 without KASLR
TEXT2 = TEXT + 0x1000  # adjacent to TEXT: a read may span both
FAR = 0xFFFFFFFF82000000  # after a gap


def pattern(seed: int, size: int) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(size))


def hand_built_core(
    segments: list[tuple[int, bytes]],
    e_type: int = ET_CORE,
    extra_memsz: int = 0,
) -> bytes:
    """ELF64 little-endian core: a PT_NOTE (empty, as kcore has one first), then one PT_LOAD
    per (vaddr, data), the data laid out in the file in REVERSE order so that a read spanning
    two segments only works by following p_offset, not by reading on in the file."""
    phnum = 1 + len(segments)
    data_at = 64 + 56 * phnum
    offsets: list[int] = []
    at = data_at + sum(len(d) for _, d in segments)
    for _, data in segments:
        at -= len(data)
        offsets.append(at)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, EV_CURRENT
    ehdr = struct.pack(ELF64_EHDR, ident, e_type, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs = struct.pack(ELF64_PHDR, PT_NOTE, 0, data_at, 0, 0, 0, 0, 0)
    for (vaddr, data), off in zip(segments, offsets, strict=True):
        memsz = len(data) + extra_memsz
        phdrs += struct.pack(ELF64_PHDR, PT_LOAD, 7, off, vaddr, 0, memsz, memsz, 0x1000)
    body = b"".join(data for _, data in reversed(segments))
    return ehdr + phdrs + body


@pytest.fixture
def core_file(tmp_path: Path) -> Path:
    path = tmp_path / "kcore"
    path.write_bytes(
        hand_built_core(
            [(TEXT, pattern(1, 0x1000)), (FAR, pattern(3, 0x100)), (TEXT2, pattern(2, 0x1000))]
        )
    )
    return path


@pytest.fixture
def reader(core_file: Path) -> KcoreReader:
    return KcoreReader.open(core_file)


def test_hand_built_segments_sorted_by_vaddr(reader: KcoreReader) -> None:
    assert [(s.vaddr, s.memsz) for s in reader.segments] == [
        (TEXT, 0x1000),
        (TEXT2, 0x1000),
        (FAR, 0x100),
    ]
    assert reader.segment_at(TEXT2 + 5) == reader.segments[1]
    assert reader.segment_at(TEXT - 1) is None
    assert isinstance(reader.segments[0], KcoreSegment)


def test_hand_built_is_kernel_memory(reader: KcoreReader) -> None:
    memory: KernelMemory = reader  # the protocol, checked by mypy
    assert memory.name == "kcore"


def test_hand_built_read_within_segment(reader: KcoreReader) -> None:
    assert reader.read(TEXT, 16) == pattern(1, 16)
    assert reader.read(TEXT + 0x10, 4) == pattern(1, 0x14)[0x10:]
    assert reader.read(FAR + 0xF0, 0x10) == pattern(3, 0x100)[0xF0:]
    assert reader.read(TEXT, 0) == b""


def test_hand_built_read_spans_adjacent_segments(reader: KcoreReader) -> None:
    got = reader.read(TEXT + 0xFF8, 16)
    assert got == pattern(1, 0x1000)[-8:] + pattern(2, 8)
    assert reader.read(TEXT, 0x2000) == pattern(1, 0x1000) + pattern(2, 0x1000)


def test_hand_built_read_into_gap_fails(reader: KcoreReader) -> None:
    with pytest.raises(MemoryReadError, match="0xffffffff81002000 is in no PT_LOAD segment") as e:
        reader.read(TEXT2 + 0xFF0, 0x20)
    assert (e.value.address, e.value.size) == (TEXT2 + 0xFF0, 0x20)
    assert str(e.value).startswith("kernel memory 0xffffffff81001ff0+0x20: ")


@pytest.mark.parametrize("address", [0, TEXT - 1, FAR + 0x100, 0xFFFFFFFFFFFFFFF0])
def test_hand_built_unmapped_addresses(reader: KcoreReader, address: int) -> None:
    with pytest.raises(MemoryReadError, match="no PT_LOAD segment"):
        reader.read(address, 0x20)


def test_hand_built_negative_size(reader: KcoreReader) -> None:
    with pytest.raises(MemoryReadError, match="negative"):
        reader.read(TEXT, -1)


def test_hand_built_closed_reader(core_file: Path) -> None:
    with KcoreReader.open(core_file) as reader:
        assert reader.read(TEXT, 1) == pattern(1, 1)
    with pytest.raises(MemoryReadError, match="closed"):
        reader.read(TEXT, 1)
    reader.close()  # twice is fine


def test_hand_built_oserror_becomes_memory_read_error(
    reader: KcoreReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(fd: int, count: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pread", eio)
    with pytest.raises(MemoryReadError, match=r"input/output error \(EIO\)"):
        reader.read(TEXT, 8)


def test_hand_built_partial_preads_are_completed(
    reader: KcoreReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pread = os.pread

    def dribble(fd: int, count: int, offset: int) -> bytes:
        return real_pread(fd, min(count, 7), offset)

    monkeypatch.setattr(os, "pread", dribble)
    assert reader.read(TEXT + 0xFF0, 0x30) == pattern(1, 0x1000)[-16:] + pattern(2, 0x20)


def test_hand_built_segment_past_end_of_file_is_short_read(tmp_path: Path) -> None:
    path = tmp_path / "kcore"
    path.write_bytes(hand_built_core([(TEXT, pattern(1, 0x100))], extra_memsz=0x100))
    reader = KcoreReader.open(path)
    with pytest.raises(MemoryReadError, match=r"short read .* \(256 of 512 bytes\)"):
        reader.read(TEXT, 0x200)


def test_open_missing_names_path_and_reason(tmp_path: Path) -> None:
    with pytest.raises(KernelAccessError, match=r"kcore: not present on this kernel \(ENOENT\)"):
        KcoreReader.open(tmp_path / "kcore")


def test_open_not_elf(tmp_path: Path) -> None:
    path = tmp_path / "kcore"
    path.write_bytes(b"not an ELF file at all" * 4)
    with pytest.raises(KernelAccessError, match="not a usable core file"):
        KcoreReader.open(path)


def test_open_hand_built_exec_is_not_core(tmp_path: Path) -> None:
    path = tmp_path / "kcore"
    path.write_bytes(hand_built_core([(TEXT, pattern(1, 16))], e_type=ET_EXEC))
    with pytest.raises(KernelAccessError, match="not an ELF64 core file"):
        KcoreReader.open(path)


def test_open_hand_built_without_pt_load(tmp_path: Path) -> None:
    path = tmp_path / "kcore"
    path.write_bytes(hand_built_core([]))
    with pytest.raises(KernelAccessError, match="no PT_LOAD segments"):
        KcoreReader.open(path)
