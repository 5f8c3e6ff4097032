"""One scan: every surface collected and assessed, with what could not be read."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from patchguard.findings import Disposition, Finding, Gap, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.errors import KernelAccessError, oserror_reason
from patchguard.surfaces.base import AnyState, Surface, SurfaceState


@dataclass(frozen=True)
class SurfaceResult:
    surface: Surface
    state: AnyState
    findings: list[Finding]
    seconds: float


@dataclass(frozen=True)
class ScanReport:
    host: str
    kernel_release: str
    boot_id: str
    started_at: str
    seconds: float
    memory_reader: str | None
    results: list[SurfaceResult] = field(default_factory=list)
    command: str = "scan"  # or "check": what produced the report

    @property
    def findings(self) -> list[Finding]:
        every = [f for r in self.results for f in r.findings]
        return sorted(every, key=lambda f: (-f.severity, f.surface, f.subject))

    @property
    def gaps(self) -> list[Gap]:
        return [g for r in self.results for g in r.state.gaps]

    def worst(self) -> Severity | None:
        """The most severe finding that calls for action: an explained change and a hook an
        exception allows are shown, but do not decide the exit code."""
        acting = [
            f
            for f in self.findings
            if f.disposition not in (Disposition.EXPLAINED, Disposition.ALLOWED)
        ]
        return max((f.severity for f in acting), default=None)


def _boot_id(kernel: Kernel) -> str:
    try:
        return kernel.boot_id()
    except (OSError, KernelAccessError):  # a captured tree without it
        return ""


def _unread(surface: Surface, exc: OSError) -> AnyState:
    """An OSError a surface did not turn into a gap itself (a file that vanished or was
    refused mid-read) becomes one here, so one surface never stops the scan."""
    where = exc.filename or surface.name
    return SurfaceState(surface.name, (), gaps=[Gap(surface.name, str(where), oserror_reason(exc))])


Policy = Callable[[list[Finding], AnyState], list[Finding]]


# The order surfaces start in (bench/scan): the longest first; last, modules, the one that
# waits for /proc/kallsyms (~40 ms of reading: the others need none, the kernel names their
# addresses), so that the others run while it is read.
START_FIRST = ("processes", "kernel_text", "syscalls")
START_LAST = ("modules",)


def _run_one(surface: Surface, kernel: Kernel, policy: Policy | None) -> SurfaceResult:
    s0 = time.perf_counter()
    try:
        state = surface.collect(kernel)
    except OSError as exc:  # nothing read: nothing to assess
        return SurfaceResult(surface, _unread(surface, exc), [], time.perf_counter() - s0)
    findings = surface.assess(state)
    if policy is not None:
        findings = policy(findings, state)
    return SurfaceResult(surface, state, findings, time.perf_counter() - s0)


def prepare_surfaces(kernel: Kernel, surfaces: Sequence[Surface]) -> None:
    """What the surfaces will load into the kernel (a module modprobed, a socket that
    auto-loads one), done before any of them reads: no view is read before patchguard's own
    loads and another after them (the modules cross-view would call the difference hidden).
    A surface says so with a `prepare(kernel)` method."""
    for surface in surfaces:
        prepare = getattr(surface, "prepare", None)
        if prepare is not None:
            prepare(kernel)


def run_scan(
    kernel: Kernel,
    surfaces: Sequence[Surface],
    progress: Callable[[Surface], None] | None = None,
    workers: int = 2,
    policy: Policy | None = None,
    read_ahead: bool = True,
) -> ScanReport:
    """Collect and assess every surface. Surfaces are independent, and most of their time is
    spent in the kernel (reads, bpf(2)) with the GIL released, so a small pool overlaps them;
    results keep the order of `surfaces`. `policy` rewrites each surface's findings (the
    exceptions in force mark what they cover as allowed). `read_ahead`: start reading
    /proc/kallsyms at once, for the surfaces that will want it (a look at one or two surfaces
    that may not, the guard's trigger checks, leaves it to whoever asks)."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    kernel.end_look()  # a scan is one look: nothing an earlier one decoded is served again
    if any(s.name == "modules" for s in surfaces):
        prepare_surfaces(kernel, surfaces)
    if read_ahead:
        kernel.start_kallsyms()  # ~40 ms of kernel time, beside the surfaces that do not need it

    def run(surface: Surface) -> SurfaceResult:
        if progress is not None:
            progress(surface)
        return _run_one(surface, kernel, policy)

    # Results keep the order asked for.
    rank = {name: i for i, name in enumerate(START_FIRST)}
    rank |= {name: len(rank) + 1 for name in START_LAST}
    order = sorted(range(len(surfaces)), key=lambda i: rank.get(surfaces[i].name, len(START_FIRST)))
    # imported here: `check` builds its report with this module and runs no pool
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {i: pool.submit(run, surfaces[i]) for i in order}
        results = [futures[i].result() for i in range(len(surfaces))]
    return report_for(kernel, results, t0, started)


def report_for(
    kernel: Kernel,
    results: list[SurfaceResult],
    t0: float,
    started: datetime | None = None,
    command: str = "scan",
) -> ScanReport:
    """The report of results gathered since perf_counter() read `t0`."""
    started = started or datetime.now(UTC)
    return ScanReport(
        host=os.uname().nodename,
        kernel_release=os.uname().release if kernel.live else kernel.root.name,
        boot_id=_boot_id(kernel),
        started_at=started.isoformat(timespec="seconds"),
        seconds=time.perf_counter() - t0,
        memory_reader=kernel.memory_reader,
        results=results,
        command=command,
    )
