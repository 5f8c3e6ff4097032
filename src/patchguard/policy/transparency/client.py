"""Verifying a published log from outside: fetch with limits, verify, remember, watch.

A log is read from an http(s) URL (urllib, a timeout on every socket operation, an overall
deadline per file, and a byte limit per file that the server cannot raise) or from a
directory. `verify` checks the checkpoint's signature, then either every entry and tile
(`full`) or only a consistency proof from the checkpoint it saw last (kept per origin under
the state directory). A log that went back, or whose new checkpoint does not extend the old
one, raises SplitView carrying both notes. The first contact needs the log's verifier key;
later ones take it from the state (pinned: a different key is refused unless given again).
A checkpoint signed by another key is taken only under a log-key rotation (rotation.py): the
log's entries announce the key, signed by the pinned one; the whole log is then verified.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from patchguard.atomic import write_atomic
from patchguard.policy import ledger
from patchguard.policy.chain import COLUMNS, FORMAT, Entry, entry_from_row
from patchguard.policy.transparency import TransparencyError, merkle, note, rotation, tiles
from patchguard.policy.transparency.checkpoint import (
    SignedCheckpoint,
    check_consistent,
    open_checkpoint,
    parse_checkpoint,
)

TIMEOUT = 10.0  # seconds per socket operation
DEADLINE = 60.0  # seconds per file, however slowly a server drips it
MAX_ENTRIES = 10_000_000  # a full verify of a checkpoint claiming more is refused
MAX_STATE = 2 * note.MAX_NOTE
MAX_TOTAL = 4 << 30  # bytes one verify reads in all (a 100,000-entry ledger is about 60 MB)


class VerifyFailed(TransparencyError):
    """The log was read but does not verify (its tiles or entries do not give its root)."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "patchguard"


def _read_limited(read: Callable[[int], bytes], limit: int, where: str) -> bytes:
    chunks: list[bytes] = []
    total, deadline = 0, time.monotonic() + DEADLINE
    while True:
        chunk = read(min(65536, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise tiles.TileError(f"{where}: more than the {limit} bytes it can hold")
        if time.monotonic() > deadline:
            raise tiles.TileError(f"{where}: not received within {DEADLINE:.0f} s")


def _http(prefix: str) -> tiles.Fetch:
    def fetch(path: str, limit: int) -> bytes:
        url = f"{prefix.rstrip('/')}/{path}"
        request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise tiles.TileError(f"{url}: {length} bytes, more than {limit}")
                data = _read_limited(response.read, limit, url)
                if length is not None and length.isdigit() and len(data) != int(length):
                    raise tiles.TileError(f"{url}: cut short at {len(data)} of {length} bytes")
                return data
        except urllib.error.HTTPError as exc:
            raise tiles.TileError(f"{url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise tiles.TileError(f"{url}: cannot fetch: {reason}") from None

    return fetch


def _directory(root: Path) -> tiles.Fetch:
    def fetch(path: str, limit: int) -> bytes:
        where = root / path
        try:
            with open(where, "rb") as f:
                return _read_limited(f.read, limit, str(where))
        except OSError as exc:
            raise tiles.TileError(f"{where}: cannot read: {exc.strerror or exc}") from None

    return fetch


def fetcher(location: str, budget: int = MAX_TOTAL) -> tiles.Fetch:
    """Fetch files of the log at `location`, at most `budget` bytes in all."""
    fetch = _http(location) if location.startswith(("http://", "https://")) else None
    fetch = fetch or _directory(Path(location))
    spent = 0

    def counted(path: str, limit: int) -> bytes:
        nonlocal spent
        if spent >= budget:
            raise tiles.TileError(f"{location}: over the {budget} bytes one verify may read")
        allowed = min(limit, budget - spent)
        try:
            data = fetch(path, allowed)
        except tiles.TileError as exc:
            if allowed < limit and "more than" in str(exc):
                raise tiles.TileError(
                    f"{location}: over the {budget} bytes one verify may read"
                ) from None
            raise
        spent += len(data)
        return data

    return counted


@dataclass(frozen=True)
class Remembered:
    vkey: str
    checkpoint: bytes


def _state_file(state: Path, origin: str) -> Path:
    return state / "tlog" / hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32]


def remembered(state: Path, origin: str) -> Remembered | None:
    path = _state_file(state, origin)
    try:
        raw = _directory(path.parent)(path.name, MAX_STATE)
    except tiles.TileError:
        if not path.exists():
            return None
        raise
    try:
        doc = json.loads(raw)
        return Remembered(str(doc["vkey"]), str(doc["checkpoint"]).encode("utf-8"))
    except (ValueError, KeyError, TypeError):
        raise TransparencyError(f"{path}: not a checkpoint patchguard remembered") from None


def remember(state: Path, vkey: str, signed: SignedCheckpoint) -> None:
    path = _state_file(state, signed.checkpoint.origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"vkey": vkey, "checkpoint": signed.encoded.decode("utf-8")}
    write_atomic(path, json.dumps(doc, indent=1).encode("utf-8"), 0o600)


def _origin_of(message: bytes) -> str:
    text = note.parse(message).text
    return text.split("\n", 1)[0]


@dataclass(frozen=True)
class Verified:
    vkey: str  # the log key that verified it
    signed: SignedCheckpoint
    previous: SignedCheckpoint | None  # the checkpoint remembered from last time
    source: tiles.TileSource
    entries: tuple[bytes, ...] | None  # every entry, when verified in full


def open_log(
    location: str, fetch: tiles.Fetch, vkey: str | None, state: Path
) -> tuple[SignedCheckpoint, str]:
    """The log's current checkpoint, signature verified, and the vkey that verified it."""
    message = fetch("checkpoint", note.MAX_NOTE)
    where = f"{location.rstrip('/')}/checkpoint"
    try:
        origin = _origin_of(message)
        before = remembered(state, origin)
        if vkey is None and before is None:
            raise TransparencyError("first contact with this log: give its key with --vkey")
        verifier = note.parse_vkey(vkey or (before.vkey if before else ""))
        if before is not None and note.parse_vkey(before.vkey) != verifier:
            raise TransparencyError(
                f"the state pins another key for this log ({before.vkey}); "
                f"remove {_state_file(state, origin)} to trust a new one"
            )
        return open_checkpoint(message, verifier), verifier.vkey
    except note.NoteError as exc:
        raise note.NoteError(f"{where}: {exc}") from None
    except TransparencyError as exc:
        raise TransparencyError(f"{where}: {exc}") from None


def _rotated(
    location: str, fetch: tiles.Fetch, vkey: str | None, state: Path, first: note.NoteError
) -> tuple[SignedCheckpoint, str]:
    """The checkpoint, signed by a successor of the pinned key that a rotation entry in the
    log's own entries announced (those entries are then verified in full against it, and
    replayed: the rotation's signatures checked); `first` if there is none."""
    message = fetch("checkpoint", note.MAX_NOTE)
    try:
        origin = _origin_of(message)
        before = remembered(state, origin)
        pinned = note.parse_vkey(vkey or (before.vkey if before else ""))
        size = parse_checkpoint(note.parse(message).text).size
    except TransparencyError:
        raise first from None
    if size > MAX_ENTRIES or not size:
        raise first
    source = tiles.TileSource(fetch, size)
    data = [e for b in tiles.bundles_for(size) for e in source.entries(b.index)]
    entries = [parse_entry(e, i) for i, e in enumerate(data)]
    if not rotation.rotations(entries):
        raise first
    try:
        signed, key = rotation.open_announced(message, pinned, entries)
    except note.NoteError as exc:
        raise note.NoteError(f"{location.rstrip('/')}/checkpoint: {exc}") from None
    return signed, key.vkey


def check(
    location: str,
    vkey: str | None,
    state: Path,
    full: bool = True,
    replay: bool = True,
    budget: int = MAX_TOTAL,
) -> Verified:
    """The log at `location` verified (in `full`: every entry and tile, and with `replay` the
    entries as a ledger too) and consistent with what `state` remembers (left unchanged)."""
    fetch = fetcher(location, budget)
    try:
        signed, key = open_log(location, fetch, vkey, state)
    except note.NoteError as exc:  # perhaps a key a rotation entry announced: read them all
        signed, key = _rotated(location, fetch, vkey, state, exc)
        full = replay = True
    size = signed.checkpoint.size
    source = tiles.TileSource(fetch, size)
    before = remembered(state, signed.checkpoint.origin)
    previous = open_checkpoint(before.checkpoint, note.parse_vkey(before.vkey)) if before else None
    entries = _verify_full(source, signed) if full else None
    if entries is not None and replay:
        replay_entries(entries)
    if previous is not None:
        old = previous.checkpoint.size
        proof = merkle.consistency_proof(source, old, size) if old <= size else []
        check_consistent(previous, signed, proof)
    return Verified(key, signed, previous, source, entries)


def verify(
    location: str, vkey: str | None, state: Path, full: bool = True, replay: bool = True
) -> Verified:
    """`check`, then the new checkpoint remembered in `state` for next time."""
    done = check(location, vkey, state, full, replay)
    remember(state, done.vkey, done.signed)
    return done


def _verify_full(source: tiles.TileSource, signed: SignedCheckpoint) -> tuple[bytes, ...]:
    """Every entry hashed, the root recomputed, and every published tile checked against it."""
    size = signed.checkpoint.size
    if size > MAX_ENTRIES:
        raise VerifyFailed(f"a full verify of {size} entries is over the {MAX_ENTRIES} limit")
    entries: list[bytes] = []
    for bundle in tiles.bundles_for(size):
        entries.extend(source.entries(bundle.index))
    tree = merkle.MemoryTree([merkle.leaf_hash(e) for e in entries])
    if tree.root() != signed.checkpoint.root:
        raise VerifyFailed(f"the entries do not give the root of {signed.checkpoint.describe()}")
    for tile in tiles.tiles_for(size):
        if b"".join(source.tile(tile.level, tile.index)) != tiles.tile_data(tree, tile):
            raise VerifyFailed(f"{tile.path} does not match the entries")
    return tuple(entries)


def new_entries(verified: Verified) -> list[tuple[int, bytes]]:
    """Entries added since the remembered checkpoint, each proven included in the new one."""
    start = verified.previous.checkpoint.size if verified.previous else 0
    checkpoint, source = verified.signed.checkpoint, verified.source
    out: list[tuple[int, bytes]] = []
    for index in range(start // tiles.WIDTH, (checkpoint.size + tiles.WIDTH - 1) // tiles.WIDTH):
        for offset, data in enumerate(source.entries(index)):
            at = index * tiles.WIDTH + offset
            if at < start:
                continue
            proof = merkle.inclusion_proof(source, at, checkpoint.size)
            try:
                merkle.verify_inclusion(
                    merkle.leaf_hash(data), at, checkpoint.size, proof, checkpoint.root
                )
            except merkle.ProofError as exc:
                raise VerifyFailed(f"entry {at + 1}: {exc}") from None
            out.append((at, data))
    return out


def parse_entry(data: bytes, at: int) -> Entry:
    """A published leaf read back as a ledger entry (its fields' types checked)."""
    try:
        doc = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise VerifyFailed(f"entry {at + 1}: not ASCII JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise VerifyFailed(f"entry {at + 1}: not a {FORMAT} entry")
    entry = entry_from_row(tuple(doc.get(name) for name in COLUMNS), at + 1)
    if isinstance(entry, str):
        raise VerifyFailed(entry)
    return entry


def replay_entries(entries: tuple[bytes, ...]) -> ledger.Replay:
    """The published entries checked as a ledger: numbering, hashes, links, signatures, rules."""
    rows = [tuple(getattr(parse_entry(e, i), c) for c in COLUMNS) for i, e in enumerate(entries)]
    loaded = ledger.replay(rows)
    if not loaded.result.ok:
        raise VerifyFailed(f"the published ledger does not verify: {loaded.result.reason}")
    return loaded
