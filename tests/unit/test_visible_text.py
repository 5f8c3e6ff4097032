"""Text from others shown on a terminal: control characters visible, one line, no markup."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from patchguard.findings import Disposition, Finding, Severity
from patchguard.report import _render_findings
from patchguard.text import has_control, visible


def test_controls_are_shown_as_escapes() -> None:
    assert visible("Acme\n#99 approved") == "Acme\\n#99 approved"
    assert visible("\x1b[2J\x1b]0;title\x07") == "\\x1b[2J\\x1b]0;title\\x07"
    assert visible("a\tb\rc\x7f\x9b") == "a\\tb\\rc\\x7f\\x9b"
    assert visible("evil\u202etxt.exe\u2028") == "evil\\u202etxt.exe\\u2028"
    assert visible("C:\\x1b") == "C:\\\\x1b"  # a literal backslash cannot pass for an escape
    assert visible("Überwachung GmbH 監視") == "Überwachung GmbH 監視"


@given(st.text())
def test_shown_text_has_no_control_and_is_one_line(text: str) -> None:
    shown = visible(text)
    assert not has_control(shown) and "\n" not in shown and "\x1b" not in shown


@given(st.text())
def test_nothing_is_lost(text: str) -> None:
    """The escapes are Python's: the original comes back, so nothing is hidden either."""
    shown = visible(text)
    assert shown.encode("latin-1", "backslashreplace").decode("unicode_escape") == text


def test_scan_output_shows_names_as_text() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    name = "rootkit\x1b[2J[bold red]innocent[/]\nkworker"
    finding = Finding("processes", "hidden-process", Severity.HIGH, name,
                      f"process {name} is hidden [link=x]", Disposition.SUSPICIOUS, None,
                      {"comm": name})  # fmt: skip
    _render_findings([finding], console)
    text = out.getvalue()
    assert "\x1b" not in text and "\\x1b[2J[bold red]innocent[/]\\nkworker" in text
    assert "[link=x]" in text  # markup in a summary is text, not a link
