"""The web pages' routes: the public page, the ledger and its entries (no login), and the
operator pages (an operator token, as a bearer header or kept in a cookie).

The operator's cookie holds the token itself, HttpOnly (no script can read it), SameSite=
Strict (no other site's page sends it) and Secure on HTTPS, scoped to /operator. Every POST
carries a CSRF field derived from the token (an HMAC keyed by it), which a page on another
site cannot compute, and must come from this origin when the browser says where it came
from. Pages answer in HTML, errors too; every answer carries render.HEADERS."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from patchguard.server import auth
from patchguard.server.app import Server, _revoke, server_of
from patchguard.server.errors import Refused
from patchguard.server.pages import queries
from patchguard.server.pages.ledger_view import ChainVerifier
from patchguard.server.pages.render import HEADERS, PRIVATE_HEADERS, compile_all, render
from patchguard.server.pages.views import ChainStatus

COOKIE = "patchguard_operator"
MAX_FORM = 4096  # bytes: a sign-in or revoke form is a few hundred
_NUMBER = re.compile(r"[1-9][0-9]{0,11}\Z")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}\Z")
T = TypeVar("T")

router = APIRouter(include_in_schema=False)


def verifier_of(request: Request) -> ChainVerifier:
    """The app's one ChainVerifier, made on first use (register() makes it up front)."""
    state = request.app.state
    if getattr(state, "ledger_verifier", None) is None:
        server = server_of(request)
        state.ledger_verifier = ChainVerifier(server.sessions, server.key)
    found: ChainVerifier = state.ledger_verifier
    return found


def register(app: FastAPI) -> None:
    """Mount the pages on the server's app (called by app.create_app)."""
    server: Server = app.state.server
    app.state.ledger_verifier = ChainVerifier(server.sessions, server.key)
    app.state.closers.append(app.state.ledger_verifier.close)
    app.state.fleet_health = queries.HealthCache()
    compile_all()
    app.include_router(router)


def page(body: str, status: int = 200, private: bool = False) -> HTMLResponse:
    return HTMLResponse(body, status, headers=PRIVATE_HEADERS if private else HEADERS)


def message(title: str, text: str, status: int, private: bool = False) -> HTMLResponse:
    return page(render("message.html", title=title, text=text), status, private)


def _number(text: str | None) -> int | None:
    """A positive number from a URL, or None when absent; ValueError when malformed."""
    if text is None:
        return None
    if not _NUMBER.match(text):
        raise ValueError(text)
    return int(text)


async def _read(server: Server, work: Callable[[Session, datetime], T]) -> T:
    return await run_in_threadpool(server.run, work)


async def _read_ledger(
    request: Request, work: Callable[[Session, ChainVerifier, ChainStatus, datetime], T]
) -> T:
    """`work` in one transaction, given the chain's state, refreshed before it begins (the
    refresh reads in short transactions of its own, which must not wait for this one)."""
    verifier = verifier_of(request)
    chain = await run_in_threadpool(verifier.refresh)
    return await _read(server_of(request), lambda s, now: work(s, verifier, chain, now))


@router.get("/", response_class=HTMLResponse)
async def public(request: Request) -> Response:
    missed = server_of(request).settings.missed_heartbeats
    health = getattr(request.app.state, "fleet_health", None)
    found = await _read_ledger(
        request,
        lambda s, verifier, chain, now: queries.public_page(
            s, verifier, chain, now, missed, health
        ),
    )
    return page(render("public.html", page=found, generated_at=_stamp(found.generated_at)))


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%d %H:%M:%S UTC")


@router.get("/ledger", response_class=HTMLResponse)
async def ledger(request: Request, before: str | None = None) -> Response:
    try:
        start = _number(before)
    except ValueError:
        return message("Bad request", "before= must be an entry number", 400)
    found = await _read_ledger(
        request, lambda s, verifier, chain, _: queries.ledger_page(s, verifier, chain, start)
    )
    return page(render("ledger.html", page=found))


@router.get("/ledger/{seq}", response_class=HTMLResponse)
async def entry(request: Request, seq: str) -> Response:
    try:
        number = _number(seq)
    except ValueError:
        number = None
    if number is None:
        return message("No such entry", "Ledger entries are numbered from 1.", 404)
    found = await _read_ledger(
        request, lambda s, verifier, chain, _: queries.entry_page(s, verifier, chain, number)
    )
    if found is None:
        return message("No such entry", f"The ledger has no entry {number}.", 404)
    return page(render("entry.html", page=found))


def csrf_token(token: str) -> str:
    """The form field that proves a POST came from a page this operator was shown."""
    return hmac.new(token.encode(), b"patchguard pages csrf", hashlib.sha256).hexdigest()


def _presented(request: Request) -> str | None:
    """The Authorization header, or one made from the cookie; None: no credentials."""
    header = request.headers.get("authorization")
    if header:
        return header
    cookie = request.cookies.get(COOKIE)
    return f"Bearer {cookie}" if cookie else None


async def _operator(request: Request) -> str | None:
    """The operator's token if the request carries a valid one, None if it carries none;
    Refused when it carries a bad one."""
    header = _presented(request)
    if header is None:
        return None
    server = server_of(request)
    await _read(server, lambda s, now: auth.check_operator(s, header, now))
    return auth.bearer(header)


def _signed_out(error: str | None, status: int) -> HTMLResponse:
    response = page(render("login.html", error=error), status, private=True)
    if error:
        response.delete_cookie(COOKIE, path="/operator")
    return response


@router.get("/operator", response_class=HTMLResponse)
async def hosts(request: Request, after: str | None = None) -> Response:
    try:
        token = await _operator(request)
    except Refused as exc:
        return _signed_out(f"Sign in again: {exc.reason}.", exc.status)
    if token is None:
        return _signed_out(None, 200)
    if after is not None and not _FINGERPRINT.match(after):
        return message("Bad request", "after= must be a host fingerprint", 400, private=True)
    server, csrf = server_of(request), csrf_token(token)
    missed = server.settings.missed_heartbeats
    found = await _read(server, lambda s, now: queries.hosts_page(s, after, now, missed, csrf))
    return page(render("hosts.html", page=found), private=True)


@router.get("/operator/hosts/{fingerprint}", response_class=HTMLResponse)
async def host(request: Request, fingerprint: str) -> Response:
    try:
        token = await _operator(request)
    except Refused as exc:
        return _signed_out(f"Sign in again: {exc.reason}.", exc.status)
    if token is None:
        return _signed_out(None, 401)
    server, csrf = server_of(request), csrf_token(token)
    missed = server.settings.missed_heartbeats
    found = None
    if _FINGERPRINT.match(fingerprint):
        found = await _read(
            server, lambda s, now: queries.host_page(s, fingerprint, now, missed, csrf)
        )
    if found is None:
        return message("No such host", "No enrolled host has that fingerprint.", 404, True)
    return page(render("host.html", page=found), private=True)


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form, or Refused: too large, another type, or from another site."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise Refused(403, "this form was sent from another site")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(415, "send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise Refused(413, f"form larger than {MAX_FORM} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "the form cannot be read") from None
    return dict(pairs)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.post("/operator/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    try:
        token = (await _form(request)).get("token", "").strip()
        header = f"Bearer {token}"
        await _read(server_of(request), lambda s, now: auth.check_operator(s, header, now))
    except Refused as exc:
        return _signed_out(f"Not signed in: {exc.reason}.", exc.status)
    response = RedirectResponse("/operator", status_code=303, headers=PRIVATE_HEADERS)
    response.set_cookie(
        COOKIE,
        token,
        path="/operator",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


async def _checked_post(request: Request) -> dict[str, Any]:
    """The form of an operator's POST whose CSRF field matches the token; else Refused."""
    form = await _form(request)
    token = await _operator(request)
    if token is None:
        raise Refused(401, "sign in first")
    if not hmac.compare_digest(form.get("csrf", ""), csrf_token(token)):
        raise Refused(403, "the form's CSRF field does not match; reload the page")
    return form


@router.post("/operator/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    try:
        await _checked_post(request)
    except Refused as exc:
        return message("Not signed out", exc.reason, exc.status, private=True)
    response = RedirectResponse("/operator", status_code=303, headers=PRIVATE_HEADERS)
    response.delete_cookie(COOKIE, path="/operator")
    return response


@router.post("/operator/hosts/{fingerprint}/revoke", response_class=HTMLResponse)
async def revoke(request: Request, fingerprint: str) -> Response:
    try:
        await _checked_post(request)
        if not _FINGERPRINT.match(fingerprint):
            raise Refused(404, "no enrolled host has that fingerprint")
        await run_in_threadpool(_revoke, server_of(request), fingerprint)
    except Refused as exc:
        return message("Not revoked", exc.reason, exc.status, private=True)
    target = f"/operator/hosts/{fingerprint}"
    return RedirectResponse(target, status_code=303, headers=PRIVATE_HEADERS)
