"""Templates to HTML, and the headers every page is sent with.

Jinja2 with autoescape on for every template: whatever a view model holds is text, so a
vendor named `<script>` is shown as those characters. The one piece of markup a template is
given as is, the SVG chart, is built by chart.py from numbers and escaped labels. The CSS is
one file inlined in each page; the Content-Security-Policy allows exactly that stylesheet (by
its SHA-256) and no script at all, so even a bug in escaping could not run script."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from patchguard.server.pages.views import SEVERITIES

CSS = files("patchguard.server.pages").joinpath("templates/page.css").read_text("utf-8").strip()


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
    return "; ".join(
        (
            "default-src 'none'",
            f"style-src 'sha256-{digest}'",
            "img-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        )
    )


HEADERS = {
    "Content-Security-Policy": _csp(),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
PRIVATE_HEADERS = {**HEADERS, "Cache-Control": "no-store"}  # operator pages: never cached


def when(value: datetime | None) -> str:
    """A time as the pages show it: UTC to the second, or "never"."""
    if value is None:
        return "never"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def stamp(text: str) -> str:
    """A ledger entry's ISO time as the pages show times; as stored if it is not one."""
    try:
        return when(datetime.fromisoformat(text).astimezone(UTC))
    except ValueError:
        return text


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("patchguard.server.pages", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,  # a misspelt field is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["stamp"] = stamp
    env.globals["css"] = Markup(CSS)  # our own file, not anyone's text
    env.globals["severities"] = SEVERITIES
    return env


def compile_all() -> None:
    """Compile every template now (Jinja2 keeps them), so no visitor waits for it."""
    env = environment()
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)


def render(template: str, **values: Any) -> str:
    values.setdefault("generated_at", None)
    return environment().get_template(template).render(**values)
