"""Text from others, made safe to show on a terminal.

Vendor names, manifest fields, host names, kernel symbol and process names are written by
someone else. On a terminal a newline in one could forge a line of output, and an escape
sequence could clear the screen or set the window title. `visible` shows every such character
as a Python-style escape instead (`\\n`, `\\x1b`, `\\u202e`), and a backslash as `\\\\`, so
the shown text is unambiguous and stays on one line.
"""

from __future__ import annotations

import re
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# Cc: C0, DEL and C1 controls (ESC, CSI...); Cf: format characters, among them the bidi
# overrides that reorder what is shown; Zl/Zp: Unicode line and paragraph separators.
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
_FAST_SAFE = re.compile(r"[\x20-\x5b\x5d-\x7e]*\Z")  # printable ASCII without the backslash


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def visible(text: object) -> str:
    """`text` (str() of it) with every control or format character shown as an escape."""
    shown = str(text)
    if _FAST_SAFE.match(shown):
        return shown
    return "".join(map(_escape, shown))


def has_control(text: str) -> bool:
    """Whether `text` holds a character `visible` would escape (other than a backslash)."""
    return any(_escape(c) != c for c in text if c != "\\")
