"""KernelMemory: one interface to read kernel virtual memory, with two readers behind it.

- `ebpf`: a tiny raw-tracepoint program that calls bpf_probe_read_kernel, run by
  BPF_PROG_TEST_RUN (kernel/bpf/reader.py). Works where /proc/kcore does not exist.
- `kcore`: the ELF core image /proc/kcore (kernel/kcore.py), on kernels that have it.
The scan uses whichever works and says which (kernel/readers.py opens it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Protocol

from patchguard.kernel.errors import KernelAccessError

READ_SIZE = 1 << 20  # per read call: the eBPF reader serves up to 1 MiB per test run
# The kernel's half of the address space: from 0xffff8... with 4-level paging, but the direct
# map and vmalloc start at 0xff11... and 0xffa0... with 5-level (LA57: the lab's TCG CPU has
# it). %pK's hashed values are 32-bit, so they stay below it too.
KERNEL_SPACE = 1 << 63


def read_u64(memory: KernelMemory, address: int) -> int:
    """A little-endian unsigned long (a pointer, a count) of kernel memory."""
    return int.from_bytes(memory.read(address, 8), "little")


def read_u32(memory: KernelMemory, address: int) -> int:
    """A little-endian unsigned int of kernel memory."""
    return int.from_bytes(memory.read(address, 4), "little")


def read_chunks(memory: KernelMemory, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(address, bytes) for [start, end) in READ_SIZE reads."""
    for at in range(start, end, READ_SIZE):
        yield at, memory.read(at, min(READ_SIZE, end - at))


def sha256_of(memory: KernelMemory, start: int, end: int) -> str:
    """SHA-256 of [start, end) as one stream: one hash call per READ_SIZE read, no bytes kept."""
    whole = hashlib.sha256()
    for _, chunk in read_chunks(memory, start, end):
        whole.update(chunk)
    return whole.hexdigest()


class MemoryReadError(KernelAccessError):
    """A read of kernel memory failed (unmapped, refused by lockdown, ...)."""

    def __init__(self, address: int, size: int, reason: str) -> None:
        super().__init__(f"kernel memory {address:#x}+{size:#x}", reason)
        self.address = address
        self.size = size


class KernelMemory(Protocol):
    name: str  # "ebpf" or "kcore": shown in the scan so the user knows how memory was read

    def read(self, address: int, size: int) -> bytes:
        """Exactly `size` bytes at kernel virtual `address`, or MemoryReadError."""
        ...

    def close(self) -> None: ...
