"""The sockets surface: collect() reads every namespace's views, assess() judges them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchguard.findings import Finding
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.reading import records_of
from patchguard.surfaces.sockets.assess import assess_records
from patchguard.surfaces.sockets.collect import NAME, read_sockets
from patchguard.surfaces.sockets.records import HiddenSocket, Listener, NetnsViews

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

    def collect(self, kernel: Kernel) -> SurfaceState:
        r = read_sockets(kernel, self.probe)
        counts = {
            "namespaces": len(records_of(r.records, NetnsViews)),
            "sockets": r.sockets,
            "listeners": len(records_of(r.records, Listener)),
            "hidden": len(records_of(r.records, HiddenSocket)),
        }
        return SurfaceState(NAME, tuple(r.records), counts, tuple(r.gaps))

    def assess(self, state: SurfaceState) -> list[Finding]:
        return assess_records(state.records)
