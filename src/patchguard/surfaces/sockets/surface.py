"""The sockets surface: collect() reads every namespace's views, assess() judges them."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from patchguard.findings import Finding
from patchguard.kernel.errors import KernelAccessError
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.sockets.assess import assess_hidden
from patchguard.surfaces.sockets.collect import NAME, read_sockets
from patchguard.surfaces.sockets.records import SocketRecords

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

PROBE_MODES = ("auto", "all", "none")


class SocketsSurface:
    name = NAME
    title = "Sockets (cross-view)"

    def __init__(self, probe: str = "auto") -> None:
        # auto: probe a transport's port space where sockstat counts more sockets than the
        # views list; all: always (about 200 ms per transport and namespace); none: never.
        if probe not in PROBE_MODES:
            raise ValueError(f"probe mode {probe!r} is not one of {', '.join(PROBE_MODES)}")
        self.probe = probe

    def prepare(self, kernel: Kernel) -> None:
        """One sock_diag dump of each transport before any view of the modules is read
        (scan.prepare_surfaces): the kernel auto-loads inet_diag, tcp_diag, udp_diag, raw_diag
        and unix_diag where they are modules, and they are then in every view, not only in
        those read after it. A kernel without loadable modules is not asked."""
        if kernel.live and os.path.exists(kernel.path("/proc/modules")):
            from patchguard.surfaces.sockets.diag import DUMPED, dump

            for protocol in DUMPED:
                with contextlib.suppress(KernelAccessError):
                    dump(protocol)

    def collect(self, kernel: Kernel) -> SurfaceState[SocketRecords]:
        r = read_sockets(kernel, self.probe)
        records = SocketRecords.of(r.records)
        counts = {
            "namespaces": len(records.namespaces),
            "sockets": r.sockets,
            "listeners": len(records.listeners),
            "hidden": len(records.hidden),
        }
        return SurfaceState(NAME, records, counts, tuple(r.gaps))

    def assess(self, state: SurfaceState[SocketRecords]) -> list[Finding]:
        return [assess_hidden(h) for h in state.records.hidden]
