"""The live kernel's memory reader with its reads counted: for tests that prove a cache or a
look reads kernel memory no more often than it should (the reads themselves stay real)."""

from __future__ import annotations

from patchguard.kernel.memory import KernelMemory


class Counted:
    """The real reader, with its reads counted."""

    def __init__(self, memory: KernelMemory) -> None:
        self.memory, self.name, self.reads = memory, memory.name, 0

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        return self.memory.read(address, size)

    def close(self) -> None:
        self.memory.close()
