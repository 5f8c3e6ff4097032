"""The fleet server's HTTP API (FastAPI): what hosts call, what operators call, and the
signed ledger anyone can fetch. docs/server.md lists every route.

`create_app(settings)` builds the app; `app.state.server` is the `Server` (settings, engine,
session factory, the server's signing key) that every route, and the web pages in
`patchguard.server.pages` (mounted by their own `register(app)` when present), read. Every
refusal is a JSON `{"error": "one line"}` with a 4xx status and a log line; a body is
bounded (`Settings.max_body`, checked before it is read), must be `application/json`, and is
parsed only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from patchguard.fleet.wire import MAX_BODY, check_enrol_proof, signed_document
from patchguard.server import auth, ledger, tlog
from patchguard.server.db import (
    DEFAULT_URL,
    MISSED_HEARTBEATS,
    Alert,
    FindingRow,
    Host,
    engine,
    host_status,
    session_factory,
    transaction,
    utcnow,
)
from patchguard.server.errors import Refused
from patchguard.server.ingest import Checked, Stored, check, mark_silent, store, validation_text
from patchguard.server.schemas import EnrolIn
from patchguard.signing import HostKey

log = logging.getLogger("patchguard.server")
DEFAULT_KEY = Path("/var/lib/patchguard/server.key")
T = TypeVar("T")
MAX_CACHED_KEYS = 1_000_000  # about 150 bytes each: a bound on memory, not on the fleet
MAX_BATCH = 64  # messages in one POST /api/v1/reports/batch


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_URL
    key_path: Path = DEFAULT_KEY
    missed_heartbeats: int = MISSED_HEARTBEATS
    silence_check_seconds: float = 15.0
    max_body: int = MAX_BODY

    @classmethod
    def from_env(cls) -> Settings:
        """For worker processes that uvicorn starts (`patchguard server --workers N`)."""
        env = os.environ
        return cls(
            db_url=env.get("PATCHGUARD_SERVER_DB", DEFAULT_URL),
            key_path=Path(env.get("PATCHGUARD_SERVER_KEY", str(DEFAULT_KEY))),
            missed_heartbeats=int(env.get("PATCHGUARD_SERVER_MISSED", MISSED_HEARTBEATS)),
            silence_check_seconds=float(env.get("PATCHGUARD_SERVER_SILENCE_CHECK", "15")),
        )

    def to_env(self) -> dict[str, str]:
        return {
            "PATCHGUARD_SERVER_DB": self.db_url,
            "PATCHGUARD_SERVER_KEY": str(self.key_path),
            "PATCHGUARD_SERVER_MISSED": str(self.missed_heartbeats),
            "PATCHGUARD_SERVER_SILENCE_CHECK": str(self.silence_check_seconds),
        }


@dataclass(frozen=True)
class Timing:
    """Where one request's time went on the server, sent back in a Server-Timing header (W3C):
    a client or a bench can then tell the server's phases from the time spent before the
    request reached it. One thread at a time adds to it, in the request's order."""

    started: float = field(default_factory=time.perf_counter)
    spans: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, since: float) -> float:
        """Add the time from `since` to now to span `name`; returns now, the next `since`."""
        now = time.perf_counter()
        self.spans[name] = self.spans.get(name, 0.0) + now - since
        return now

    def header(self) -> str:
        return ", ".join(f"{name};dur={s * 1000:.2f}" for name, s in self.spans.items())


@dataclass(frozen=True)
class Server:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    key: HostKey

    writer: threading.Lock = field(default_factory=threading.Lock, compare=False)
    # fingerprint -> enrolled public key (hex): a fingerprint is its key's digest, so an entry
    # never goes stale; revocation is read in each message's transaction
    keys: dict[str, str] = field(default_factory=dict, compare=False)

    def run(self, work: Callable[[Session, datetime], T], timing: Timing | None = None) -> T:
        """`work(session, now)` in one transaction, committed if it returns. `timing` gets
        the lock wait, the pool's checkout, the work and the commit."""
        spans = timing if timing is not None else Timing()
        with self._turn(spans):
            mark = time.perf_counter()
            with transaction(self.sessions) as session:
                session.connection()  # the pool's checkout, timed apart from the work
                mark = spans.mark("pool", mark)
                result = work(session, utcnow())
                mark = spans.mark("work", mark)
            spans.mark("commit", mark)
        return result

    def write(self, work: Callable[[Connection, datetime], T], timing: Timing | None = None) -> T:
        """As `run`, on a Core connection: taking a message needs no ORM session, whose
        set-up and unit of work cost more CPU than the message's own statements."""
        spans = timing if timing is not None else Timing()
        with self._turn(spans):
            mark = time.perf_counter()
            with self.engine.begin() as connection:
                mark = spans.mark("pool", mark)
                result = work(connection, utcnow())
                mark = spans.mark("work", mark)
            spans.mark("commit", mark)
        return result

    @contextlib.contextmanager
    def _turn(self, spans: Timing) -> Iterator[None]:
        """On SQLite the process's threads take turns here, in order, rather than polling
        SQLite's lock."""
        lock = self.writer if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        mark = time.perf_counter()
        with lock:
            spans.mark("lock", mark)
            yield

    def public_key(self, fingerprint: str) -> str | None:
        """The host's key if this process has seen it; None sends the message on unverified,
        for `store` to verify with the key on the host's row it locks anyway (no extra
        transaction for a host's first message)."""
        return self.keys.get(fingerprint)

    def remember(self, stored: Stored, fingerprint: str) -> Stored:
        if fingerprint not in self.keys and len(self.keys) < MAX_CACHED_KEYS:
            self.keys[fingerprint] = stored.public_key
        return stored


def server_of(request: Request) -> Server:
    found: Server = request.app.state.server
    return found


async def read_json_body(request: Request, limit: int) -> bytes:
    """The request body, refused before parsing when it is not JSON or too large."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise Refused(415, f"content type must be application/json, not {kind or 'none'!r}")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise Refused(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def host_json(host: Host, now: datetime, missed: int) -> dict[str, Any]:
    return {
        "fingerprint": host.fingerprint,
        "name": host.name,
        "status": host_status(host, now, missed),
        "enrolled_at": _iso(host.enrolled_at),
        "revoked_at": _iso(host.revoked_at),
        "last_seq": host.last_seq,
        "last_seen_at": _iso(host.last_seen_at),
        "last_report_at": _iso(host.last_report_at),
        "last_heartbeat_at": _iso(host.last_heartbeat_at),
        "last_clean_sweep_at": _iso(host.last_clean_sweep_at),
        "heartbeat_interval": host.heartbeat_interval,
        "baseline_digest": host.baseline_digest,
    }


def alert_json(alert: Alert, fingerprint: str) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "host": fingerprint,
        "severity": alert.severity,
        "created_at": _iso(alert.created_at),
        "resolved_at": _iso(alert.resolved_at),
        "evidence": alert.evidence,
    }


def finding_json(row: FindingRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "severity": row.severity,
        "technique": row.technique,
        "subject": row.subject,
        "summary": row.summary,
        "disposition": row.disposition,
        "evidence": row.evidence,
        "seen_at": _iso(row.seen_at),
    }


def _enrol(server: Server, header: str | None, given: EnrolIn) -> dict[str, Any]:
    from patchguard.signing import fingerprint_of

    if not check_enrol_proof(given.name, given.public_key, given.proof):
        raise Refused(401, "the enrolment is not signed by the key it registers")
    fingerprint = fingerprint_of(bytes.fromhex(given.public_key))

    def work(session: Session, now: datetime) -> dict[str, Any]:
        query = select(Host).where(Host.fingerprint == fingerprint).with_for_update()
        host = session.scalars(query).one_or_none()
        token = auth.check_enrol(session, header, now, again=host is not None)
        if host is not None and host.revoked_at is not None:
            raise Refused(403, f"host {fingerprint} was revoked; enrol it with a new key")
        if host is None:  # a repeated enrolment (a lost answer) spends nothing
            auth.spend_enrol(session, token, now)
            host = Host(
                name=given.name,
                public_key=given.public_key,
                fingerprint=fingerprint,
                enrolled_at=now,
                last_seq=0,
                status="active",
            )
            session.add(host)
            log.info("enrolled host %s", fingerprint)
        document = {
            "format": "patchguard.enrolled/1",
            "host": fingerprint,
            "last_seq": host.last_seq,
            "server_key": server.key.public_key_bytes().hex(),
        }
        return signed_document(document, server.key)

    return server.run(work)


def _operator(server: Server, request: Request) -> None:
    header = request.headers.get("authorization")
    server.run(lambda s, now: auth.check_operator(s, header, now))


def _host_detail(server: Server, fingerprint: str) -> dict[str, Any]:
    def work(session: Session, now: datetime) -> dict[str, Any]:
        host = session.scalars(select(Host).where(Host.fingerprint == fingerprint)).one_or_none()
        if host is None:
            raise Refused(404, f"no host {fingerprint}")
        alerts = session.scalars(select(Alert).where(Alert.host_id == host.id).order_by(Alert.id))
        findings = session.scalars(
            select(FindingRow)
            .where(FindingRow.host_id == host.id)
            .order_by(FindingRow.id.desc())
            .limit(500)
        )
        return {
            **host_json(host, now, server.settings.missed_heartbeats),
            "alerts": [alert_json(a, fingerprint) for a in alerts],
            "findings": [finding_json(f) for f in findings],
        }

    return server.run(work)


def _revoke(server: Server, fingerprint: str) -> dict[str, Any]:
    def work(session: Session, now: datetime) -> dict[str, Any]:
        query = select(Host).where(Host.fingerprint == fingerprint).with_for_update()
        host = session.scalars(query).one_or_none()
        if host is None:
            raise Refused(404, f"no host {fingerprint}")
        if host.revoked_at is None:
            host.revoked_at, host.status = now, "revoked"
            log.warning("host %s revoked by an operator", fingerprint)
        return host_json(host, now, server.settings.missed_heartbeats)

    return server.run(work)


def _hosts(session: Session, now: datetime, missed: int) -> list[dict[str, Any]]:
    return [host_json(h, now, missed) for h in session.scalars(select(Host).order_by(Host.id))]


def _alerts(session: Session, open_only: bool) -> list[dict[str, Any]]:
    query = select(Alert, Host.fingerprint).join(Host, Host.id == Alert.host_id)
    if open_only:
        query = query.where(Alert.resolved_at.is_(None))
    rows = session.execute(query.order_by(Alert.id.desc()).limit(1000))
    return [alert_json(alert, fingerprint) for alert, fingerprint in rows]


def _take_report(server: Server, raw: bytes, timing: Timing, queued: float) -> Stored:
    # Parsing and signatures before any transaction: on SQLite, outside the write lock.
    mark = timing.mark("queue", queued)  # waiting for a thread of the pool
    checked = check(raw, server.public_key)
    timing.mark("check", mark)
    host = checked.body.host
    try:
        stored = server.write(lambda connection, now: store(connection, checked, now), timing)
        return server.remember(stored, host)
    except IntegrityError:
        # Another process stored the same report (or seq) between our check and insert, or
        # the id is another report's: the retry looks and answers as for a resend or replay.
        pass
    try:
        return server.write(lambda connection, now: store(connection, checked, now, True))
    except IntegrityError:
        raise Refused(409, "conflicts with a stored report") from None


def _batch_messages(raw: bytes) -> list[bytes]:
    """The envelopes of a batch body `{"messages": [envelope, ...]}`, each as its own JSON
    text for `check`; Refused when the batch itself is malformed."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise Refused(400, "malformed JSON") from None
    if not isinstance(data, dict) or set(data) != {"messages"}:
        raise Refused(422, 'a batch is {"messages": [envelope, ...]} and nothing else')
    messages = data["messages"]
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_BATCH:
        raise Refused(422, f"messages: a list of 1 to {MAX_BATCH} envelopes")
    return [json.dumps(m).encode() for m in messages]


def _answer(stored: Stored) -> dict[str, Any]:
    return {"status": 200, "stored": not stored.duplicate, "duplicate": stored.duplicate}


def _refusal(exc: Refused, where: int) -> dict[str, Any]:
    log.warning("refused batch message %d: %d %s", where, exc.status, exc.reason)
    return {"status": exc.status, "error": exc.reason}


def _store_all(
    server: Server, connection: Connection, checked: list[Checked | Refused], now: datetime
) -> list[dict[str, Any]]:
    answers = []
    for where, one in enumerate(checked):
        try:
            if isinstance(one, Refused):
                raise one
            stored = server.remember(store(connection, one, now), one.body.host)
            answers.append({**_answer(stored), "seq": one.body.seq})
        except Refused as exc:  # refused before it wrote anything: the others go on
            answers.append(_refusal(exc, where))
    return answers


def _take_batch(server: Server, raws: list[bytes]) -> list[dict[str, Any]]:
    """Each message checked, then all stored in order in one transaction: one commit (one
    fsync) for a host's backlog instead of one each, which is what kept a guard's stop
    waiting behind its findings. A message refused is answered as it would be alone; a
    conflict with another process's insert sends each again on its own."""
    checked: list[Checked | Refused] = []
    for raw in raws:
        try:
            checked.append(check(raw, server.public_key))
        except Refused as exc:
            checked.append(exc)
    # one host's row locked per transaction: two batches can never wait on each other
    if len({one.body.host for one in checked if not isinstance(one, Refused)}) > 1:
        raise Refused(422, "a batch carries the messages of one host")
    try:
        return server.write(lambda connection, now: _store_all(server, connection, checked, now))
    except IntegrityError:
        return [_alone(server, raw, where) for where, raw in enumerate(raws)]


def _alone(server: Server, raw: bytes, where: int) -> dict[str, Any]:
    try:
        stored = _take_report(server, raw, Timing(), time.perf_counter())
    except Refused as exc:
        return _refusal(exc, where)
    return {**_answer(stored), "seq": stored.seq}


def routes(app: FastAPI) -> None:
    @app.post("/api/v1/enrol")
    async def enrol(request: Request) -> dict[str, Any]:
        server = server_of(request)
        raw = await read_json_body(request, server.settings.max_body)
        try:
            given = EnrolIn.model_validate_json(raw)
        except ValidationError as exc:
            raise Refused(422, f"enrolment: {validation_text(exc)}") from None
        header = request.headers.get("authorization")
        return await run_in_threadpool(_enrol, server, header, given)

    @app.post("/api/v1/reports")
    async def report(request: Request, response: Response) -> dict[str, Any]:
        server, timing = server_of(request), Timing()
        raw = await read_json_body(request, server.settings.max_body)
        queued = timing.mark("body", timing.started)
        stored = await run_in_threadpool(_take_report, server, raw, timing, queued)
        response.headers["Server-Timing"] = timing.header()
        return {"stored": not stored.duplicate, "duplicate": stored.duplicate, "seq": stored.seq}

    @app.post("/api/v1/reports/batch")
    async def batch(request: Request) -> dict[str, Any]:
        server = server_of(request)
        raw = await read_json_body(request, 2 * server.settings.max_body)
        raws = await run_in_threadpool(_batch_messages, raw)
        return {"results": await run_in_threadpool(_take_batch, server, raws)}

    @app.get("/api/v1/policy")
    async def policy(request: Request) -> dict[str, Any]:
        server = server_of(request)
        document = await run_in_threadpool(server.run, lambda s, now: ledger.export(s))
        return signed_document(document, server.key)

    @app.get("/api/v1/health")
    async def health(request: Request) -> dict[str, Any]:
        return {"ok": True, "database": server_of(request).engine.dialect.name}

    operator_routes(app)


def operator_routes(app: FastAPI) -> None:
    @app.get("/api/v1/hosts")
    async def hosts(request: Request) -> dict[str, Any]:
        server = server_of(request)
        await run_in_threadpool(_operator, server, request)
        missed = server.settings.missed_heartbeats
        found = await run_in_threadpool(server.run, lambda s, now: _hosts(s, now, missed))
        return {"hosts": found}

    @app.get("/api/v1/hosts/{fingerprint}")
    async def host(request: Request, fingerprint: str) -> dict[str, Any]:
        server = server_of(request)
        await run_in_threadpool(_operator, server, request)
        return await run_in_threadpool(_host_detail, server, fingerprint)

    @app.post("/api/v1/hosts/{fingerprint}/revoke")
    async def revoke(request: Request, fingerprint: str) -> dict[str, Any]:
        server = server_of(request)
        await run_in_threadpool(_operator, server, request)
        return await run_in_threadpool(_revoke, server, fingerprint)

    @app.get("/api/v1/alerts")
    async def alerts(request: Request, open: bool = False) -> dict[str, Any]:
        server = server_of(request)
        await run_in_threadpool(_operator, server, request)
        found = await run_in_threadpool(server.run, lambda s, now: _alerts(s, open))
        return {"alerts": found}


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        log.warning(
            "refused %s %s from %s: %d %s",
            request.method,
            request.url.path,
            _client(request),
            exc.status,
            exc.reason,
        )
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        reason = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        return await refused(request, Refused(422, reason))

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", str(exc.orig).splitlines()[0] if exc.orig else exc)
        return JSONResponse({"error": "database unavailable; retry later"}, status_code=503)


async def _watch_silence(server: Server) -> None:
    """Mark silent hosts now and then; status is also computed on read, so a page never
    waits for this, but an alert needs someone to raise it."""
    missed = server.settings.missed_heartbeats
    while True:
        await asyncio.sleep(server.settings.silence_check_seconds)
        try:
            await run_in_threadpool(server.run, lambda s, now: mark_silent(s, now, missed))
        except OperationalError as exc:
            log.error("silence check failed: %s", exc.orig)


def make_server(settings: Settings) -> Server:
    bound = engine(settings.db_url)
    return Server(
        settings, bound, session_factory(bound), HostKey.load_or_create(settings.key_path)
    )


def _mount_pages(app: FastAPI) -> None:
    try:
        pages = importlib.import_module("patchguard.server.pages")
    except ModuleNotFoundError as exc:
        if exc.name != "patchguard.server.pages":
            raise
        return
    register = getattr(pages, "register", None)
    if register is not None:
        register(app)


def create_app(settings: Settings) -> FastAPI:
    """The app on an already migrated database (`migrate.migrate`)."""
    server = make_server(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(_watch_silence(server))
        try:
            yield
        finally:
            watcher.cancel()
            for close in app.state.closers:  # background work first, then the connections
                await asyncio.to_thread(close)
            server.engine.dispose()

    app = FastAPI(title="patchguard fleet server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.state.closers = []  # called at shutdown, before the engine closes: list[() -> None]
    error_handlers(app)
    routes(app)
    tlog.register(app)
    _mount_pages(app)
    return app


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def app_from_env() -> FastAPI:
    """The app in a uvicorn worker process, which inherits no logging set-up."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return create_app(Settings.from_env())
