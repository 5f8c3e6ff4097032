"""Collecting witness cosignatures: the log operator's half of C2SP tlog-witness.

`collect(view, directory, urls)` takes the checkpoint `ledger publish` wrote into `directory`
(checked: signed by the log's key, and given by the ledger's entries), sends it to each witness
as an add-checkpoint request with the consistency proof from the size that witness holds (a
first try from the size it answered last time, else 0; a 409 names the size it holds, and one
retry follows from there), and writes the checkpoint back with every cosignature line it got
appended (C2SP signed-note allows many signatures), atomically. A witness that is offline,
refuses, or answers with anything but a cosignature of this very checkpoint adds nothing and is
reported: it delays the quorum hosts need, it never weakens it (hosts count cosignatures with
their own witness keys). Cosignatures already on the published checkpoint are kept.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from patchguard.atomic import write_atomic
from patchguard.policy.ledger import LedgerError
from patchguard.policy.transparency import TransparencyError, note, publish, rotation
from patchguard.policy.transparency.checkpoint import MAX_SKEW, SignedCheckpoint
from patchguard.policy.transparency.note import NoteError, Signature

TIMEOUT = 10.0  # seconds per socket operation
MAX_ANSWER = 4096  # a witness answers with a line or two; more is not a cosignature


@dataclass(frozen=True)
class Answer:
    url: str
    lines: tuple[Signature, ...]  # the cosignature lines taken (empty: none)
    problem: str | None  # why nothing was taken


@dataclass(frozen=True)
class Collected:
    checkpoint: SignedCheckpoint
    answers: tuple[Answer, ...]
    encoded: bytes  # what was written

    @property
    def cosigned(self) -> int:
        return sum(1 for a in self.answers if a.lines)


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    target = f"{url.rstrip('/')}/add-checkpoint"
    request = urllib.request.Request(target, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(MAX_ANSWER + 1)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise TransparencyError(f"cannot reach it: {getattr(exc, 'reason', exc)}") from None


def _held_size(status: int, data: bytes) -> int | None:
    """The size a 409 (text/x.tlog.size) says the witness holds, if it says one."""
    text = data.decode("ascii", errors="replace").strip()
    return int(text) if status == 409 and text.isdigit() and len(text) <= 19 else None


def _lines(view: publish.LogView, signed: SignedCheckpoint, data: bytes) -> tuple[Signature, ...]:
    """The cosignature lines of a 200 answer: each well formed, a cosignature/v1 shape (8-byte
    time and a 64-byte signature), not dated in the future, never claiming the log's key."""
    if len(data) > MAX_ANSWER:
        raise NoteError(f"answered with over {MAX_ANSWER} bytes")
    try:
        parsed = note.parse(signed.note.text.encode("utf-8") + b"\n" + data)
    except NoteError as exc:
        raise NoteError(f"answered with no cosignature line: {exc}") from None
    log = view.config.verifier
    out = []
    for sig in parsed.signatures:
        if sig.name == log.name or len(sig.signature) != 72:
            raise NoteError(f"answered with a line that is not a cosignature ({sig.name})")
        when = int.from_bytes(sig.signature[:8], "big")
        if when > time.time() + MAX_SKEW:
            raise NoteError(f"its cosignature is dated {when}, over {MAX_SKEW} s ahead")
        out.append(sig)
    return tuple(out)


def _ask(view: publish.LogView, signed: SignedCheckpoint, url: str) -> Answer:
    size, old = signed.checkpoint.size, 0
    for _ in range(2):
        body = publish.proof_text(f"old {old}", view.tree.consistency_proof(old, size), signed)
        status, data = _post(url, body.encode("utf-8"))
        if status == 200:
            return Answer(url, _lines(view, signed, data), None)
        held = _held_size(status, data)
        if held is None or held == old or held > size:
            return Answer(url, (), _refusal(status, data, held, size))
        old = held
    return Answer(url, (), "answered 409 twice")


def _refusal(status: int, data: bytes, held: int | None, size: int) -> str:
    if held is not None and held > size:
        return f"holds size {held}, newer than the published {size}: publish first"
    text = data.decode("utf-8", errors="replace").strip().split("\n", 1)[0][:200]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _published(view: publish.LogView, directory: Path) -> tuple[SignedCheckpoint, bytes]:
    """The checkpoint in `directory`, signed by the log and given by the ledger's entries."""
    where = directory / "checkpoint"
    try:
        with open(where, "rb") as f:
            there = f.read(note.MAX_NOTE + 1)
    except OSError as exc:
        raise LedgerError(where, f"cannot read: {exc.strerror or exc}") from None
    try:
        signed = rotation.open_any(there, view.keys)
    except TransparencyError as exc:
        raise LedgerError(where, f"not a checkpoint of this log: {exc}") from None
    c = signed.checkpoint
    if c.size > view.tree.size or view.tree.root(c.size) != c.root:
        raise LedgerError(where, f"{c.describe()} is not given by the ledger's entries")
    return signed, there


def _merge(there: bytes, answers: list[Answer]) -> bytes:
    """The published note with each new witness's lines appended; a witness that already has a
    line on it keeps that one (collecting again never grows the note without bound)."""
    base = note.parse(there)
    lines = list(base.signatures)
    for sig in (s for a in answers for s in a.lines):
        if all((sig.name, sig.key_id) != (old.name, old.key_id) for old in lines):
            lines.append(sig)
    if len(lines) > note.MAX_SIGNATURES:
        raise NoteError(f"over {note.MAX_SIGNATURES} signatures: not written")
    return note.Note(base.text, tuple(lines)).encode()


def collect(view: publish.LogView, directory: Path, urls: list[str]) -> Collected:
    """Ask each witness at `urls` to cosign the published checkpoint; write what they gave."""
    signed, there = _published(view, directory)
    answers = []
    for url in dict.fromkeys(urls):
        try:
            answers.append(_ask(view, signed, url))
        except TransparencyError as exc:
            answers.append(Answer(url, (), str(exc)))
    merged = _merge(there, answers)
    if merged != there:
        _write_if_unchanged(directory / "checkpoint", there, merged)
    return Collected(signed, tuple(answers), merged)


def _write_if_unchanged(path: Path, there: bytes, merged: bytes) -> None:
    """Write the cosigned checkpoint only over the one it was collected for: a `ledger
    publish` that ran meanwhile wrote a newer one, which an older one must not replace (a
    monitor would see the log go back). Run publish and witness-collect one after the other."""
    try:
        with open(path, "rb") as f:
            now = f.read(note.MAX_NOTE + 1)
        if note.parse(now).text != note.parse(there).text:
            raise LedgerError(path, "a newer checkpoint was published meanwhile: collect again")
        write_atomic(path, merged)
    except OSError as exc:
        raise LedgerError(path, f"cannot write: {exc.strerror or exc}") from None
