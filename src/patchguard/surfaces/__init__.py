"""One module per protected structure or hookable interface of the kernel."""

from __future__ import annotations

from patchguard.surfaces.base import Surface


def all_surfaces() -> list[Surface]:
    """Every surface, in the order the scan shows them."""
    from patchguard.surfaces.ebpf import EbpfSurface
    from patchguard.surfaces.entry import EntrySurface
    from patchguard.surfaces.kernel_text import KernelTextSurface
    from patchguard.surfaces.modules import ModulesSurface
    from patchguard.surfaces.netfilter import NetfilterSurface
    from patchguard.surfaces.posture import PostureSurface
    from patchguard.surfaces.processes import ProcessesSurface
    from patchguard.surfaces.sockets import SocketsSurface
    from patchguard.surfaces.syscalls import SyscallsSurface
    from patchguard.surfaces.tracing import TracingSurface

    return [
        PostureSurface(),
        KernelTextSurface(),
        EntrySurface(),
        SyscallsSurface(),
        EbpfSurface(),
        TracingSurface(),
        ModulesSurface(),
        ProcessesSurface(),
        NetfilterSurface(),
        SocketsSurface(),
    ]
