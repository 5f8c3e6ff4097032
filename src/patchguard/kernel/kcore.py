"""KcoreReader: kernel virtual memory through /proc/kcore.

/proc/kcore is an ELF64 core file made up on the fly: each PT_LOAD program header maps a
range of kernel virtual addresses (p_vaddr, p_memsz) to an offset in the file (p_offset).
pyelftools parses the headers once; reads are os.pread on a descriptor kept open, which is
fast and has no shared file position to race on. The kernel writes p_filesz == p_memsz, so
every mapped byte is in the file; a short read is reported, never padded.

Not every kernel has it (CONFIG_PROC_KCORE), and lockdown=confidentiality refuses it.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from patchguard.kernel.errors import KernelAccessError, oserror_reason
from patchguard.kernel.memory import MemoryReadError

KCORE_PATH = "/proc/kcore"


@dataclass(frozen=True)
class KcoreSegment:
    """One PT_LOAD program header: kernel virtual [vaddr, vaddr + memsz) at file `offset`."""

    vaddr: int
    memsz: int
    offset: int

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz


def load_segments(stream: BinaryIO) -> list[KcoreSegment]:
    """The PT_LOAD segments of an ELF64 core file, by vaddr; ELFError/ValueError if it is not."""
    elf = ELFFile(stream)
    if elf.elfclass != 64 or elf["e_type"] != "ET_CORE":
        raise ValueError(f"not an ELF64 core file (class {elf.elfclass}, type {elf['e_type']})")
    segments = [
        KcoreSegment(seg["p_vaddr"], seg["p_memsz"], seg["p_offset"])
        for seg in elf.iter_segments()
        if seg["p_type"] == "PT_LOAD" and seg["p_memsz"] > 0
    ]
    return sorted(segments, key=lambda seg: seg.vaddr)


class KcoreReader:
    """KernelMemory over /proc/kcore (or any ELF64 core file laid out the same way)."""

    name: str = "kcore"

    def __init__(self, path: str, stream: BinaryIO, segments: list[KcoreSegment]) -> None:
        self.path = path
        self.segments = segments
        self._stream: BinaryIO | None = stream
        self._starts = [seg.vaddr for seg in segments]  # for bisect

    @classmethod
    def open(cls, path: Path | str = KCORE_PATH) -> KcoreReader:
        """Open and parse the headers; KernelAccessError with the reason if that fails."""
        where = str(path)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - owned by the reader until close()
        except OSError as exc:
            raise KernelAccessError(where, oserror_reason(exc)) from exc
        try:
            segments = load_segments(stream)
        except OSError as exc:
            stream.close()
            raise KernelAccessError(where, oserror_reason(exc)) from exc
        except (ELFError, ValueError) as exc:
            stream.close()
            raise KernelAccessError(where, f"not a usable core file: {exc}") from exc
        if not segments:
            stream.close()
            raise KernelAccessError(where, "no PT_LOAD segments: nothing of the kernel is mapped")
        return cls(where, stream, segments)

    def segment_at(self, address: int) -> KcoreSegment | None:
        """The PT_LOAD segment holding `address`, or None."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address < self.segments[i].end:
            return self.segments[i]
        return None

    def read(self, address: int, size: int) -> bytes:
        """Exactly `size` bytes at kernel virtual `address`, across adjacent segments if needed."""
        if size < 0 or address < 0:
            raise MemoryReadError(address, size, "negative address or size")
        if self._stream is None:
            raise MemoryReadError(address, size, f"{self.path} reader is closed")
        fd = self._stream.fileno()
        chunks: list[bytes] = []
        at, left = address, size
        while left:
            segment = self.segment_at(at)
            if segment is None:
                reason = f"{at:#x} is in no PT_LOAD segment of {self.path}"
                raise MemoryReadError(address, size, reason)
            count = min(left, segment.end - at)
            chunks.append(self._pread(fd, count, segment.offset + (at - segment.vaddr), at))
            at, left = at + count, left - count
        return b"".join(chunks)

    def _pread(self, fd: int, count: int, offset: int, address: int) -> bytes:
        # EIO: a mapped range without backing page (holes, unplugged memory); EPERM: lockdown.
        # A large read may come back in parts; only a read of 0 bytes means the file ends.
        parts: list[bytes] = []
        done = 0
        while done < count:
            try:
                data = os.pread(fd, count - done, offset + done)
            except OSError as exc:
                raise MemoryReadError(address + done, count - done, oserror_reason(exc)) from exc
            if not data:
                reason = f"short read from {self.path} ({done} of {count} bytes)"
                raise MemoryReadError(address, count, reason)
            parts.append(data)
            done += len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> KcoreReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["KCORE_PATH", "KcoreReader", "KcoreSegment", "load_segments"]
