"""The ledger's transparency log served by the fleet server, as C2SP tlog-tiles under `/log`.

`GET /log/checkpoint` is the latest signed checkpoint imported (text/plain, `no-cache`: it
changes), `GET /log/tile/<L>/<N>[.p/<W>]` a tile of hashes and `GET /log/tile/entries/<N>[.p/<W>]`
a bundle of entries (application/octet-stream, `immutable`: a tile's bytes at a given width
never change in an append-only log). The bytes are exactly what `patchguard ledger publish`
writes for the same ledger, so `patchguard ledger verify --url http://SERVER/log` and any
tlog client read the server like a published directory. A partial tile is served at any width
the tree holds (a client with an older checkpoint asks for older widths); a full tile only
once it is full. A malformed path (not the tlog-tiles form, an index not in its one spelling,
a width outside 1..255) is 400; a tile the tree does not hold is 404.

Each process keeps the tree in memory (`LogCache`), extended by the entries imported since
it last looked, and checks the checkpoint's root against it before serving anything of it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from patchguard.policy.chain import COLUMNS, entry_from_row
from patchguard.policy.transparency import TransparencyError, merkle, note, store, tiles
from patchguard.policy.transparency.checkpoint import Checkpoint, open_checkpoint
from patchguard.server.db import LedgerCheckpoint, LedgerEntry, LedgerLog
from patchguard.server.errors import Refused

PREFIX = "/log"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"
IMMUTABLE = "public, max-age=31536000, immutable"
# tile/<L>/<N>[.p/<W>]: L a level (entries: the bundles), N in 3-digit groups, at most 7
# groups (any uint64), W 1..255 digits checked below.
_TILE = re.compile(r"(entries|\d{1,2})/((?:x\d{3}/){0,6}\d{3})(?:\.p/(\d{1,3}))?")
router = APIRouter()


@dataclass(frozen=True)
class Latest:
    checkpoint: Checkpoint
    note: bytes


class LogCache:
    """One process's copy of the tree of the imported entries, extended as they grow."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tree = merkle.MemoryTree()
        self._checked: set[int] = set()  # sizes whose checkpoint root matched

    def tree(self, session: Session, latest: Latest) -> merkle.MemoryTree:
        size = latest.checkpoint.size
        with self._lock:
            if self._tree.size < size:
                self._extend(session, size)
            if size not in self._checked:
                if self._tree.root(size) != latest.checkpoint.root:
                    raise Refused(503, f"the stored checkpoint {size} does not match the entries")
                self._checked.add(size)
        return self._tree

    def _extend(self, session: Session, size: int) -> None:
        for row in _entries(session, self._tree.size, size):
            self._tree.append(merkle.leaf_hash(row))
        if self._tree.size < size:
            raise Refused(503, f"the server holds {self._tree.size} entries, not {size}")


def _entries(session: Session, first: int, end: int) -> list[bytes]:
    """The leaves (entry bytes) of entries first+1..end."""
    query = select(LedgerEntry).where(LedgerEntry.seq > first, LedgerEntry.seq <= end)
    leaves = []
    for row in session.scalars(query.order_by(LedgerEntry.seq)):
        values = [getattr(row, name) for name in COLUMNS]
        entry = entry_from_row(values, row.seq)
        if isinstance(entry, str):
            raise Refused(503, f"the server's ledger is damaged: {entry}")
        leaves.append(store.leaf_bytes(entry))
    return leaves


def _latest(session: Session) -> Latest:
    log = session.get(LedgerLog, 1)
    query = select(LedgerCheckpoint).order_by(LedgerCheckpoint.size.desc()).limit(1)
    row = session.scalars(query).first()
    if log is None or row is None:
        raise Refused(404, "the server holds no transparency log (import a ledger that is one)")
    verifier = note.Verifier(log.origin, note.ED25519, bytes.fromhex(log.public_key))
    try:
        return Latest(open_checkpoint(row.note, verifier).checkpoint, row.note)
    except TransparencyError as exc:
        raise Refused(503, f"the stored checkpoint does not open: {exc}") from None


def parse_tile(path: str) -> tiles.Tile | None:
    """The tile a tlog-tiles path names, width 256 for a full one; None if malformed."""
    match = _TILE.fullmatch(path)
    if match is None:
        return None
    where, index_text, width_text = match.groups()
    index = int(index_text.replace("x", "").replace("/", ""))
    if tiles.encode_index(index) != index_text:
        return None  # one spelling per tile: "x000/001" is not tile 1
    width = tiles.WIDTH if width_text is None else int(width_text)
    if width_text is not None and (not 1 <= width < tiles.WIDTH or str(width) != width_text):
        return None
    return tiles.Tile(-1 if where == "entries" else int(where), index, width)


def tile_bytes(session: Session, cache: LogCache, tile: tiles.Tile) -> bytes:
    latest = _latest(session)
    size = latest.checkpoint.size
    if tile.width > tiles.tile_width(tile.level, tile.index, size):
        raise Refused(404, f"{tile.path}: not in the tree of {size}")
    if tile.level < 0:
        first = tile.index * tiles.WIDTH
        try:
            return tiles.encode_bundle(_entries(session, first, first + tile.width))
        except TransparencyError as exc:
            raise Refused(503, f"{tile.path}: {exc}") from None
    return tiles.tile_data(cache.tree(session, latest), tile)


def _cache(request: Request) -> LogCache:
    found: LogCache = request.app.state.log_cache
    return found


def _sessions(request: Request) -> Session:
    session: Session = request.app.state.server.sessions()
    return session


@router.get(f"{PREFIX}/checkpoint")
async def checkpoint(request: Request) -> Response:
    def read() -> bytes:
        with _sessions(request) as session:
            return _latest(session).note

    body = await run_in_threadpool(read)
    return Response(body, media_type=TEXT, headers={"Cache-Control": "no-cache"})


@router.get(PREFIX + "/tile/{path:path}")
async def tile(request: Request, path: str) -> Response:
    wanted = parse_tile(path)
    if wanted is None:
        raise Refused(400, "not a tlog-tiles path: tile/<L>/<N>[.p/<W>], W from 1 to 255")

    def read() -> bytes:
        with _sessions(request) as session:
            return tile_bytes(session, _cache(request), wanted)

    body = await run_in_threadpool(read)
    return Response(body, media_type=BINARY, headers={"Cache-Control": IMMUTABLE})


def register(app: FastAPI) -> None:
    """Serve the log on `app` (its `app.state.server` gives the database)."""
    app.state.log_cache = LogCache()
    app.include_router(router)
