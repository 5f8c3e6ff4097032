"""Kernel access: the only code that touches the kernel. Everything takes a root path so tests
can feed captured trees; the live kernel is root "/"."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from patchguard.kernel.errors import KernelAccessError

if TYPE_CHECKING:
    from patchguard.kernel.kallsyms import SymbolTable


class Kernel:
    """A handle on one kernel: the live one (root "/") or a captured tree of its files."""

    def __init__(self, root: Path | str = "/") -> None:
        self.root = Path(root)

    @property
    def live(self) -> bool:
        return self.root == Path("/")

    def path(self, kernel_path: str) -> Path:
        """Where an absolute kernel path such as /proc/kallsyms lies under this root."""
        return self.root / kernel_path.lstrip("/")

    def read_text(self, kernel_path: str) -> str:
        """Read a pseudo file; OSError is turned into a one-line KernelAccessError."""
        from patchguard.kernel.errors import oserror_reason

        try:
            return self.path(kernel_path).read_text(errors="replace")
        except OSError as exc:
            raise KernelAccessError(kernel_path, oserror_reason(exc)) from exc

    @cached_property
    def kallsyms(self) -> SymbolTable:
        from patchguard.kernel.kallsyms import SymbolTable

        return SymbolTable.parse(self.read_text("/proc/kallsyms"))


__all__ = ["Kernel", "KernelAccessError"]
