"""Kernel memory laid out by a test, for the walkers of kernel lists (netfilter hooks,
kprobe_table) where this machine's kernel cannot give the real thing; the lab reads real ones."""

from __future__ import annotations

import struct

from patchguard.kernel.memory import MemoryReadError


class Image:
    """address -> bytes; a read must fall inside one block, else it fails like a fault."""

    name = "image"

    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}

    def put(self, address: int, data: bytes) -> None:
        self.blocks[address] = data

    def put_words(self, address: int, *words: int) -> None:
        self.put(address, struct.pack(f"<{len(words)}Q", *words))

    def read(self, address: int, size: int) -> bytes:
        for start, data in self.blocks.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        raise MemoryReadError(address, size, "not mapped")

    def close(self) -> None:
        pass
