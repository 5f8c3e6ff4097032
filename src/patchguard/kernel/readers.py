"""Open the kernel-memory reader that works on this kernel: eBPF first, then /proc/kcore."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchguard.kernel.bpf.reader import EbpfReader
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KernelMemory

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


def open_reader(kernel: Kernel) -> KernelMemory:
    """The first reader that opens: eBPF (needs no kcore), then /proc/kcore. If neither
    works, one error that gives both reasons."""
    if not kernel.live:
        raise KernelAccessError("kernel memory", "a captured tree has no live kernel memory")
    reasons = []
    try:
        reader = EbpfReader.open()
        kernel.own_prog_ids.add(reader.prog_id)
        kernel.own_map_ids.add(reader.map_id)
        return reader
    except KernelAccessError as exc:
        reasons.append(f"eBPF reader: {exc.reason}")
    from patchguard.kernel.kcore import KcoreReader  # pyelftools: only when kcore is used

    try:
        return KcoreReader.open(str(kernel.path("/proc/kcore")))
    except KernelAccessError as exc:
        reasons.append(f"/proc/kcore: {exc.reason}")
    raise KernelAccessError("kernel memory", "; ".join(reasons))
