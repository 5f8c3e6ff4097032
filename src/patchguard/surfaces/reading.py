"""What every surface's collect() shares: reading pseudo files into records while keeping a
gap for each one that could not be read, and picking records of one kind back out while
collect() still reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from patchguard.findings import Gap
from patchguard.kernel.errors import KernelAccessError

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

T = TypeVar("T")


@dataclass
class Reading:
    """What collect() has read so far, and what it could not."""

    surface: str
    kernel: Kernel
    records: list[object] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    files_read: int = 0

    def gap(self, what: str, reason: str) -> None:
        self.gaps.append(Gap(self.surface, what, reason))

    def text(self, what: str, path: str) -> str | None:
        """The file's text, or None with a gap recorded."""
        try:
            text = self.kernel.read_text(path)
        except KernelAccessError as exc:
            self.gap(what, str(exc))
            return None
        self.files_read += 1
        return text

    def optional(self, path: str) -> str | None:
        """A file some kernels or configurations lack: None without a gap."""
        try:
            return self.kernel.read_text(path)
        except KernelAccessError:
            return None

    def parsed(self, what: str, path: str, parse: Callable[[str], T]) -> T | None:
        """The file parsed; content the parser rejects is a gap that says what was odd."""
        text = self.text(what, path)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.gap(what, f"{path}: unexpected content: {exc}")
            return None


def records_of(records: Sequence[object], kind: type[T]) -> list[T]:
    """Records of one kind from what a collect() has read so far (a surface's state holds
    them by kind: base.RecordSet)."""
    return [r for r in records if isinstance(r, kind)]
