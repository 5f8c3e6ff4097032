"""Scan output: the JSON document (schema `patchguard.scan/1`, see docs/scan-json.md) and the
terminal view (rich, imported only when a report is rendered for the terminal)."""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchguard.findings import Finding, Severity
from patchguard.text import visible

if TYPE_CHECKING:
    from rich.console import Console

    from patchguard.scan import ScanReport, SurfaceResult

SCHEMA = "patchguard.scan/1"
SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


def process_seconds(stat: str | None = None, now: float | None = None) -> float | None:
    """Wall time since this process started, until now: what its caller waited, the
    interpreter's start and the imports included. The start is field 22 of /proc/self/stat
    (clock ticks since boot), against CLOCK_BOOTTIME; None where that cannot be read."""
    try:
        text = Path("/proc/self/stat").read_text() if stat is None else stat
        start = int(text.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    now = time.clock_gettime(time.CLOCK_BOOTTIME) if now is None else now
    return max(now - start, 0.0)


def _plain(value: Any) -> Any:
    """Records to JSON values: dataclasses to objects, enums to their names."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"kind": type(value).__name__, **out}
    if isinstance(value, Severity):
        return value.label
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def finding_json(f: Finding) -> dict[str, Any]:
    out: dict[str, Any] = _plain(f)
    out.pop("kind", None)
    return out


def to_json(report: ScanReport, records: bool = False) -> dict[str, Any]:
    """The patchguard.scan/1 document; each surface's record list only with `records` (the
    syscall dispatch rows alone are most of a document's size and of its time to print)."""
    counts = {s.label: 0 for s in Severity}
    for f in report.findings:
        counts[f.severity.label] += 1
    return {
        "schema": SCHEMA,
        "command": report.command,
        "host": report.host,
        "kernel_release": report.kernel_release,
        "boot_id": report.boot_id,
        "started_at": report.started_at,
        "seconds": round(report.seconds, 3),
        "process_seconds": _rounded(process_seconds()),
        "memory_reader": report.memory_reader,
        "summary": counts,
        "surfaces": [_surface_json(r, records) for r in report.results],
        "findings": [finding_json(f) for f in report.findings],
        "unavailable": [
            {"surface": g.surface, "what": g.what, "reason": g.reason} for g in report.gaps
        ],
    }


def _surface_json(result: SurfaceResult, records: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": result.surface.name,
        "title": result.surface.title,
        "status": result.state.status.value,
        "counts": dict(result.state.counts),
        "seconds": round(result.seconds, 3),
    }
    if records:
        out["records"] = [_plain(rec) for rec in result.state.records]
    return out


def _shown(text: object) -> str:
    """Text from the kernel or another host, for a line printed with markup: control
    characters visible (text.visible), and no `[...]` of it taken as rich markup."""
    from rich.markup import escape

    return escape(visible(text))


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def render(report: ScanReport, console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    reader = report.memory_reader or "none"
    host, release = _shown(report.host), _shown(report.kernel_release)
    waited = process_seconds()
    took = (
        f"{waited:.2f}s (collection {report.seconds:.2f}s)" if waited else f"{report.seconds:.2f}s"
    )
    console.print(
        f"[bold]patchguard {report.command}[/] {host} · kernel {release} · "
        f"memory reader: {_shown(reader)} · {took}"
    )
    table = Table(title="Surfaces", title_justify="left")
    for col in ("surface", "status", "counts", "findings"):
        table.add_column(col)
    for r in report.results:
        status = r.state.status.value
        style = {"ok": "green", "partial": "yellow", "unavailable": "red"}[status]
        counts = ", ".join(f"{k} {v}" for k, v in r.state.counts.items())
        table.add_row(r.surface.title, Text(status, style), counts, str(len(r.findings)))
    console.print(table)
    _render_findings(report.findings, console)
    if report.gaps:
        console.print("[bold]Could not be checked[/]")
        for g in report.gaps:
            what, reason = _shown(g.what), _shown(g.reason)
            console.print(f"  [red]unavailable[/] {g.surface}: {what}: {reason}", highlight=False)


def _render_findings(findings: list[Finding], console: Console) -> None:
    from rich.text import Text

    if not findings:
        console.print("[green]No findings.[/]")
        return
    console.print(f"[bold]Findings ({len(findings)})[/]")
    for f in findings:
        label = Text(f" {f.severity.label.upper()} ", SEVERITY_STYLE[f.severity])
        head = Text.assemble(
            label,
            " ",
            (visible(f.subject), "bold"),
            f"  [{f.surface}/{f.technique}"
            + (f" {f.attack_id}" if f.attack_id else "")
            + f", {f.disposition}]",
        )
        console.print(head)
        console.print(f"    {visible(f.summary)}", highlight=False, markup=False)
        for key, value in f.evidence.items():
            if value not in (None, [], ""):
                shown = ", ".join(map(str, value)) if isinstance(value, list) else value
                console.print(f"      {key}: {visible(shown)}", highlight=False, markup=False)
