"""What the decoders are handed instead of a kernel: a reader of live code and a namer of
addresses. Both are protocols so the decoding stays pure and tests feed captured bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from patchguard.kernel.kallsyms import Location

KernelRead = Callable[[int, int], "bytes | None"]  # (address, size) -> live bytes or None


class Symbols(Protocol):
    def lookup(self, address: int) -> Location | None: ...
    def in_core_text(self, address: int) -> bool: ...
    def name(self, address: int) -> str: ...
