"""The netfilter surface: collect the hook lists and BPF links, assess without a baseline."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from patchguard.findings import Finding
from patchguard.kernel.nfnetlink_hook import HookDumpError, HookSocket
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.reading import Reading

if TYPE_CHECKING:
    from patchguard.kernel import Kernel
from patchguard.surfaces.netfilter.assess import _hidden, assess_records
from patchguard.surfaces.netfilter.collect import _bpf_hooks, _proc_modules, _read_hook_lists
from patchguard.surfaces.netfilter.paths import HOOK_LISTS, NAME
from patchguard.surfaces.netfilter.records import NetfilterRecords, NetfilterViews


class NetfilterSurface:
    name = NAME
    title = "Netfilter hooks"

    def prepare(self, kernel: Kernel) -> None:
        """One hook dump before any view of the modules is read (scan.prepare_surfaces): the
        socket auto-loads nfnetlink, the dump nfnetlink_hook where it is a module. A kernel
        without loadable modules (no /proc/modules) loads neither: it is not asked (nor pyroute2
        imported for it)."""
        if kernel.live and os.path.exists(kernel.path("/proc/modules")):
            with contextlib.suppress(HookDumpError, ValueError), HookSocket() as sock:
                sock.dump(*HOOK_LISTS[0])

    def collect(self, kernel: Kernel) -> SurfaceState[NetfilterRecords]:
        r = Reading(NAME, kernel)
        if not kernel.live:
            r.gap("netfilter hooks", "nfnetlink and bpf(2) read only the live kernel")
            return SurfaceState(NAME, NetfilterRecords(), gaps=tuple(r.gaps))
        listed = _proc_modules(r)
        modules = None if listed is None else tuple(m.name for m in listed)
        hooks, source, unavailable = _read_hook_lists(r, listed)
        links = _bpf_hooks(r, hooks)
        views = NetfilterViews(modules, hooks is not None, links is not None, source, unavailable)
        records = NetfilterRecords(tuple(hooks or ()), tuple(links or ()), views)
        counts = {
            "hooks": len(hooks or []),
            **{t: sum(h.hook_type == t for h in hooks or []) for t in ("native", "nftables")},
            "bpf_links": len(links or []),
            "hidden": sum(_hidden(h, modules) is not None for h in hooks or []),
        }
        return SurfaceState(NAME, records, counts, tuple(r.gaps))

    def assess(self, state: SurfaceState[NetfilterRecords]) -> list[Finding]:
        return assess_records(state.records)
