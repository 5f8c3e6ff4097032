"""Findings by severity per day as an SVG bar chart, made here in Python: the page needs no
script and no chart service, and the chart is a few kilobytes of text that scales to any width.

Bars are stacked by severity (most severe at the bottom); colours come from the page's CSS
classes (`sev-critical`, ...), since the page's CSP allows no inline style attributes. Each bar
has a <title> (a tooltip, and what a screen reader says); the page also shows the numbers as a
table for anyone who cannot see the chart."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import escape

from patchguard.server.pages.views import SEVERITIES, DayCount

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 24, 12, 28  # margins: the y labels, the x labels
MAX_LABELS = 6  # dates under the bars: every 7th day, or every 14th..., the last day always


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _bar(x: float, width: float, day: DayCount, scale: float) -> list[str]:
    parts, y = [], float(TOP + _plot_height())
    total = sum(day.counts)
    label = ", ".join(f"{n} {s}" for s, n in zip(SEVERITIES, day.counts, strict=True) if n)
    parts.append(f"<g><title>{escape(day.day.isoformat())}: {escape(label or 'none')}</title>")
    for severity, count in zip(SEVERITIES, day.counts, strict=True):
        if count:
            height = count * scale
            y -= height
            parts.append(
                f'<rect class="sev-{severity}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{width:.1f}" height="{height:.1f}"/>'
            )
    if not total:  # an empty day still has a hover target
        parts.append(
            f'<rect class="empty" x="{x:.1f}" y="{TOP}" width="{width:.1f}" '
            f'height="{_plot_height()}"/>'
        )
    parts.append("</g>")
    return parts


def _plot_height() -> int:
    return HEIGHT - TOP - BOTTOM


def _axes(top: int) -> list[str]:
    plot_bottom = TOP + _plot_height()
    parts = [
        f'<line class="axis" x1="{LEFT}" y1="{plot_bottom}" x2="{WIDTH - RIGHT}" '
        f'y2="{plot_bottom}"/>'
    ]
    for value in (0, top // 2, top) if top > 1 else (0, top):
        y = plot_bottom - value * _plot_height() / top
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
        )
        parts.append(f'<text class="ylabel" x="{LEFT - 4}" y="{y + 4:.1f}">{value}</text>')
    return parts


def findings_chart(days: Sequence[DayCount]) -> str:
    """The SVG element (a string of escaped markup) for these days, oldest first."""
    top = nice_ceiling(max((sum(d.counts) for d in days), default=0))
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="findings by severity per day">'
    )
    parts = [head, *_axes(top)]
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    scale = _plot_height() / top
    every = 7 * max(1, -(-len(days) // (7 * MAX_LABELS)))
    for i, day in enumerate(days):
        x = LEFT + i * slot
        parts.extend(_bar(x + slot * 0.1, slot * 0.8, day, scale))
        if (len(days) - 1 - i) % every == 0:  # counted back from the last day
            parts.append(
                f'<text class="xlabel" x="{x + slot / 2:.1f}" y="{HEIGHT - 8}">'
                f"{escape(day.day.strftime('%m-%d'))}</text>"
            )
    if not any(sum(d.counts) for d in days):
        parts.append(
            f'<text class="nodata" x="{(WIDTH + LEFT) / 2:.0f}" y="{HEIGHT / 2:.0f}">'
            "no findings in this period</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
