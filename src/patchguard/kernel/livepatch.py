"""Enabled livepatches: the functions each one replaces, from /sys/kernel/livepatch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


LIVEPATCH = "/sys/kernel/livepatch"


@dataclass(frozen=True)
class Livepatched:
    """A function an enabled livepatch replaces (/sys/kernel/livepatch/<patch>/<obj>/<func>)."""

    function: str
    patch: str
    where: str  # "vmlinux/cmdline_proc_show,1"

    def __str__(self) -> str:
        return f"livepatch {self.patch} ({self.where})"


def read_livepatches(kernel: Kernel) -> list[Livepatched]:
    """The functions of every enabled livepatch; none where the kernel has no livepatch."""
    root = kernel.path(LIVEPATCH)
    found: list[Livepatched] = []
    try:
        patches = sorted(os.listdir(root))
    except OSError:
        return found
    for patch in patches:
        try:
            if (root / patch / "enabled").read_text().strip() != "1":
                continue
            objects = [o for o in sorted(os.listdir(root / patch)) if (root / patch / o).is_dir()]
            for obj in objects:
                for func in sorted(os.listdir(root / patch / obj)):
                    if (root / patch / obj / func).is_dir():
                        found.append(Livepatched(func.split(",")[0], patch, f"{obj}/{func}"))
        except OSError:
            continue  # a patch going away while we look
    return found
