"""The fleet server's web pages, server-rendered HTML that needs no script.

Public (no login): the exception ledger, newest first, each entry at /ledger/<seq> with its
signed fields and its verification; the fairness report per vendor; fleet health in
aggregate with a findings chart drawn as SVG on the server. Operator (a token): the hosts,
their last report and clean sweep, open findings with evidence, and a revoke button.

The split: views.py (frozen records a page shows), queries.py (fill them from the database),
ledger_view.py (the ledger replay and per-entry checks), chart.py (the SVG), render.py
(Jinja2 templates in templates/, autoescaped, and the security headers), routes.py (the
routes; `register(app)` mounts them on the server's app)."""

from __future__ import annotations

from fastapi import FastAPI


def register(app: FastAPI) -> None:
    """Mount the pages on the server's app (app.create_app calls this)."""
    from patchguard.server.pages.routes import register as mount

    mount(app)
