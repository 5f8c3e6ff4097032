"""Rendering the server pages from view models alone (no database): text from hosts and
manifests is escaped, the SVG chart holds for no data and for many days, the pager's links,
and the headers (a CSP that allows this page's stylesheet and no script)."""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser

import pytest

from patchguard.server.pages.chart import BOTTOM, HEIGHT, TOP, findings_chart, nice_ceiling
from patchguard.server.pages.render import HEADERS, render
from patchguard.server.pages.views import (
    SEVERITIES,
    AlertView,
    ChainStatus,
    Check,
    DayCount,
    Fairness,
    FindingView,
    FleetHealth,
    HostPage,
    HostRow,
    LedgerPage,
    LedgerRow,
    PublicPage,
    VendorRow,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVIL = ("<script>alert(1)</script>", "<b>bold</b>", '"><img src=x onerror=alert(2)>', "&amp;")
SVG = "{http://www.w3.org/2000/svg}"


class _Page(HTMLParser):
    """The elements and the text a browser would build from the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def days(counts: list[tuple[int, ...]], first: date = date(2026, 2, 1)) -> tuple[DayCount, ...]:
    return tuple(DayCount(first + timedelta(n), c) for n, c in enumerate(counts))


def chain(entries: int = 3) -> ChainStatus:
    return ChainStatus(entries, entries, "ab" * 32, None, None, NOW, NOW)


def ledger(rows: tuple[LedgerRow, ...], newer: int | None, older: int | None) -> LedgerPage:
    return LedgerPage(rows, chain(), newer, older)


def public(vendor: str, description: str) -> PublicPage:
    row = LedgerRow(3, NOW.isoformat(), "request", "aa" * 8, 3, description, Check(True, "ok"))
    vendors = (VendorRow(vendor, 2, 1, 1, 0, "1h 0m", "2h 0m", False),)
    empty = days([(0,) * len(SEVERITIES)] * 30)
    health = FleetHealth(4, 2, 1, 0, 1, empty, findings_chart(empty))
    return PublicPage(
        health, Fairness(vendors, "Host Owner", None), ledger((row,), None, None), NOW
    )


@pytest.mark.parametrize("evil", EVIL)
def test_a_vendor_name_with_markup_is_text(evil: str) -> None:
    html = render("public.html", page=public(evil, f"exception #3 requested for {evil}"))
    plain = render("public.html", page=public("Acme", "exception #3 requested for Acme"))
    page = parse(html)
    assert page.tags == parse(plain).tags  # the vendor's text added no element
    assert page.attrs == parse(plain).attrs  # nor any attribute
    assert evil in page.text  # shown as the very characters it is
    assert f"exception #3 requested for {evil}" in page.text


def test_no_markup_from_outside_reaches_the_page_unescaped() -> None:
    html = render("public.html", page=public(EVIL[0], EVIL[1]))
    assert "<script" not in html.lower()
    assert "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_hosts_text_and_evidence_are_escaped() -> None:
    name = "<script>alert('host')</script>"
    row = HostRow(1, name, "ab" * 8, "silent", None, NOW, NOW, 1, 1)
    finding = FindingView(
        "critical",
        "<i>hook</i>",
        "sys_call_table[59]",
        "<u>patched</u>",
        "tampering",
        (("owner", "<script>x</script>"), ("bytes", "e8 00 00 00 00")),
        NOW,
    )
    alert = AlertView("silent", "high", NOW, (("missed", "3 <heartbeats>"),))
    page = HostPage(row, "cd" * 32, None, NOW, None, (finding,), (alert,), "csrf-value")
    html = render("host.html", page=page)
    parsed = parse(html)
    assert not {"script", "i", "u"} & set(parsed.tags)
    shown = "".join(parsed.text)
    for text in (name, "<i>hook</i>", "<u>patched</u>", "<script>x</script>", "3 <heartbeats>"):
        assert text in shown
    assert ("value", "csrf-value") in parsed.attrs  # the revoke form carries its CSRF field


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (11, 20), (100, 100), (101, 200)],
)
def test_nice_ceiling(value: int, ceiling: int) -> None:
    assert nice_ceiling(value) == ceiling


def _rects(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)  # the chart is well-formed XML
    return [r for r in root.iter(f"{SVG}rect") if r.get("class", "").startswith("sev-")]


def test_the_chart_with_no_days_and_with_no_findings() -> None:
    for given in ((), days([(0, 0, 0, 0, 0)] * 30)):
        svg = findings_chart(given)
        assert _rects(svg) == []
        assert "no findings in this period" in svg
        assert len(ET.fromstring(svg).findall(f"{SVG}g")) == len(given)  # a hover target a day


def test_the_chart_with_many_days_stacks_each_severity() -> None:
    counts = [tuple((n * (k + 3)) % 7 for k in range(len(SEVERITIES))) for n in range(365)]
    svg = findings_chart(days(counts))
    assert len(_rects(svg)) == sum(1 for c in counts for n in c if n)
    plot, top = HEIGHT - TOP - BOTTOM, nice_ceiling(max(sum(c) for c in counts))
    bars = ET.fromstring(svg).findall(f"{SVG}g")
    assert len(bars) == 365
    for day, bar in zip(counts, bars, strict=True):
        rects = [r for r in bar.iter(f"{SVG}rect") if r.get("class", "").startswith("sev-")]
        heights = [float(r.get("height", "0")) for r in rects]
        assert sum(heights) == pytest.approx(sum(day) * plot / top, abs=0.5)
        tops = [float(r.get("y", "0")) for r in rects]
        assert tops == sorted(tops, reverse=True)  # stacked upwards, most severe at the bottom
        assert min(tops, default=TOP) >= TOP - 0.1
    assert "no findings" not in svg


def test_a_day_with_one_severity_has_its_height_and_its_title() -> None:
    svg = findings_chart(days([(0, 0, 0, 0, 0), (0, 4, 0, 0, 0)]))
    (rect,) = _rects(svg)
    assert rect.get("class") == "sev-high"
    assert float(rect.get("height", "0")) == pytest.approx((HEIGHT - TOP - BOTTOM) * 4 / 5)
    assert "2026-02-02: 4 high" in svg


def _links(html: str) -> list[str]:
    return re.findall(r'href="(/ledger\?before=\d+)"', html)


def test_the_pager_links_only_where_there_is_more() -> None:
    row = LedgerRow(7, NOW.isoformat(), "approve", "aa" * 8, 3, "d", Check(True, "ok"))
    assert _links(render("ledger.html", page=ledger((row,), None, None))) == []
    both = _links(render("ledger.html", page=ledger((row,), 58, 8)))
    assert both == ["/ledger?before=58", "/ledger?before=8"]


def test_an_entry_that_does_not_verify_says_why() -> None:
    bad = LedgerRow(9, NOW.isoformat(), "approve", "aa" * 8, 3, "d", Check(False, "entry 9: bad"))
    text = parse(render("ledger.html", page=ledger((bad,), None, None))).text
    assert "entry 9: bad" in text and "\u2717 does not verify" in text


def test_the_csp_allows_the_pages_stylesheet_and_no_script() -> None:
    csp = HEADERS["Content-Security-Policy"]
    html = render("public.html", page=public("Acme", "d"))
    (css,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "script-src" not in csp
    assert HEADERS["X-Content-Type-Options"] == "nosniff"
    assert 'name="viewport"' in html
