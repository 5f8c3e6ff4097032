"""Prometheus metrics of the guard (prometheus_client), served where the config says."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from patchguard.findings import Disposition, Finding


class Metrics:
    def __init__(self, listen: str | None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sweeps = Counter("patchguard_sweeps", "Full sweeps done", registry=r)
        self.sweep_seconds = Histogram(
            "patchguard_sweep_duration_seconds", "Sweep duration", registry=r
        )
        self.findings = Gauge(
            "patchguard_findings",
            "Findings of the last sweep (explained and allowed ones excluded)",
            ["severity", "surface"],
            registry=r,
        )
        self.last_clean = Gauge(
            "patchguard_last_clean_sweep_timestamp_seconds",
            "When a sweep last had no finding above info",
            registry=r,
        )
        self.unavailable_surfaces = Gauge(
            "patchguard_surfaces_unavailable",
            "Surfaces with parts that could not be read",
            registry=r,
        )
        self.triggers = Counter(
            "patchguard_triggers_fired", "Cheap triggers that fired", ["trigger"], registry=r
        )
        self.wakes = Counter(
            "patchguard_wakes",
            "Trigger checks, by what woke them: ringbuf, inotify, poll or signal",
            ["by"],
            registry=r,
        )
        # The process's own: resident and virtual memory, CPU seconds, open fds, start time
        # (process_resident_memory_bytes ...), what an SRE team budgets a daemon by per host.
        ProcessCollector(registry=r)
        if listen:
            host, _, port = listen.rpartition(":")
            start_http_server(int(port), addr=host, registry=r)

    def swept(self, seconds: float, findings: Sequence[Finding]) -> None:
        self.sweeps.inc()
        self.sweep_seconds.observe(seconds)
        self.findings.clear()
        counted = [
            f for f in findings if f.disposition not in (Disposition.EXPLAINED, Disposition.ALLOWED)
        ]
        for f in counted:
            self.findings.labels(f.severity.label, f.surface).inc()
        if all(f.severity == 0 for f in counted):
            self.last_clean.set(time.time())

    def unavailable(self, count: int) -> None:
        self.unavailable_surfaces.set(count)

    def triggered(self, names: Sequence[str]) -> None:
        for name in names:
            self.triggers.labels(name).inc()

    def woke(self, by: str) -> None:
        self.wakes.labels(by).inc()
