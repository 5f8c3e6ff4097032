"""The host's gate: an exception is applied only under a checkpoint the world can see.

With the guard config's `[transparency]` table (GateSettings) a host takes the published
checkpoint (from the directory or URL the table names), and applies an exception only if

1. the checkpoint verifies under the log key it pins, or under a successor a log-key rotation
   entry in the host's ledger announced (rotation.py; for the tree sizes that key signs: a
   key never announced is a critical `ledger-checkpoint-invalid`), and carries valid cosignatures
   (cosignature/v1, dated at most MAX_SKEW ahead of its clock) of at least `quorum` distinct
   configured witnesses: a *witnessed* checkpoint;
2. the checkpoint is consistent with the last witnessed one this host accepted (kept in its
   state directory; the proof is computed from the host's own ledger copy, or from the
   published tiles when that copy is shorter): otherwise a split view, critical;
3. the host's ledger is that history: its first N entries give the checkpoint's root (N its
   size), or, for a copy shorter than N, a consistency proof from the tiles links its root to
   the checkpoint's: otherwise critical, and nothing is applied;
4. every entry that makes the exception live is among those N entries: an exception requested
   or approved after the newest witnessed checkpoint is not applied, and one
   `exception-not-witnessed` finding names it and says how many witnesses signed. A
   revocation or an expiry takes effect at once, witnessed or not (it only narrows).

The exceptions that lapsed (expired or revoked: policy/match_lapsed.py) are passed on as the
ledger says, witnessed or not: a lapsed exception grants nothing, it only names the programs
still running as it declared them (exception-lapsed, low), so there is nothing to withhold.

A checkpoint that cannot be fetched is not a lie: the last witnessed one remembered is used,
and what came after it waits. Without the table, exceptions apply as the ledger says
(unwitnessed mode).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from patchguard.findings import Disposition, Evidence, Finding
from patchguard.kernel import Kernel
from patchguard.policy import ledger
from patchguard.policy.chain import Entry
from patchguard.policy.match_lapsed import Lapsed, lapses
from patchguard.policy.rules import LedgerState, Request
from patchguard.policy.transparency import (
    TransparencyError,
    client,
    merkle,
    note,
    rotation,
    store,
    tiles,
)
from patchguard.policy.transparency.checkpoint import (
    Cosigners,
    SignedCheckpoint,
    SplitView,
    check_consistent,
    check_witness_keys,
    cosigners,
    parse_checkpoint,
    quorum_text,
)
from patchguard.policy.transparency.findings import split_view_finding
from patchguard.policy.transparency.gate_config import GateSettings
from patchguard.surfaces.base import SurfaceState, finding

SURFACE = "transparency"
REFRESH = 60.0  # seconds a gate's answer is reused while the ledger is unchanged (the guard
# asks at every trigger look; a witness round is minutes, not seconds)


@dataclass(frozen=True)
class Gated:
    """What the gate let through: the exceptions to apply, and what it found."""

    applied: tuple[Request, ...]
    findings: tuple[Finding, ...]
    witnessed: int  # size of the newest witnessed checkpoint the host's ledger is in (0: none)
    notes: tuple[str, ...] = ()  # no finding, but worth a line (a checkpoint not reachable)
    lapsed: tuple[Lapsed, ...] = ()  # expired or revoked: grant nothing, need no witness


@dataclass
class _Run:
    """One gate pass: the host's ledger, what was found so far."""

    settings: GateSettings
    entries: tuple[Entry, ...]
    tree: merkle.MemoryTree
    findings: list[Finding]
    notes: list[str]

    def log_tiles(self, size: int) -> tiles.TileSource:
        """The tree of `size` as the log publishes it (at most 64 MiB read: a proof needs a
        few tiles of 8 KiB)."""
        return tiles.TileSource(client.fetcher(self.settings.checkpoint, 64 << 20), size)


def _state(settings: GateSettings) -> Path:
    return settings.state_dir / "witnessed"


def _remembered(run: _Run) -> SignedCheckpoint | None:
    """The last witnessed checkpoint this host accepted, signed by the log key it pins (one
    kept under another key is set aside: a config that changed the log key starts afresh)."""
    s = run.settings
    try:
        kept = client.remembered(_state(s), s.log.name)
        keys = {p.key.vkey for p in rotation.periods(s.log, run.entries)}
        if kept is None or note.parse_vkey(kept.vkey).vkey not in keys:
            return None
        return rotation.open_announced(kept.checkpoint, s.log, run.entries)[0]
    except (TransparencyError, OSError) as exc:
        run.notes.append(f"the witnessed checkpoint remembered is not usable: {exc}")
        return None


def _fetched(run: _Run) -> SignedCheckpoint | None:
    """The published checkpoint, signed by the log (a bad one is a critical finding)."""
    s = run.settings
    try:
        message = client.fetcher(s.checkpoint, note.MAX_NOTE)("checkpoint", note.MAX_NOTE)
    except tiles.TileError as exc:
        run.notes.append(f"no checkpoint to gate exceptions with: {exc}")
        return None
    try:
        signed = rotation.open_announced(message, s.log, run.entries)[0]
        if signed.checkpoint.origin != s.log.name:
            raise note.NoteError(f"its origin is {signed.checkpoint.origin!r}, not {s.log.name!r}")
    except TransparencyError as exc:
        if _ahead_of_ledger(run, message):
            text = f"is past the host's ledger, signed by a key it does not announce yet: {exc}"
            run.notes.append(f"the checkpoint at {s.checkpoint} {text}")
            return None
        run.findings.append(_invalid(s, f"the checkpoint at {s.checkpoint} does not verify: {exc}"))
        return None
    return signed


def _ahead_of_ledger(run: _Run, message: bytes) -> bool:
    """Whether a checkpoint that does not verify claims a tree the host's ledger does not reach
    and is signed under the log's name by a key this ledger does not know: it may be a key a
    rotation entry the host has not fetched yet announced. Not taken (nothing it witnesses
    applies) and not called tampering until the host's ledger covers it."""
    try:
        opened = note.parse(message)
        size = parse_checkpoint(opened.text).size
    except TransparencyError:
        return False
    known = {p.key.key_id for p in rotation.periods(run.settings.log, run.entries)}
    names = {(sig.name, sig.key_id) for sig in opened.signatures}
    unknown = any(n == run.settings.log.name and k not in known for n, k in names)
    return size > run.tree.size and unknown and not any(k in known for _, k in names)


def _invalid(settings: GateSettings, summary: str) -> Finding:
    return finding(
        SURFACE,
        "ledger-checkpoint-invalid",
        f"exception ledger {settings.log.name}",
        summary,
        {"checkpoint": settings.checkpoint, "log_vkey": settings.log.vkey},
        disposition=Disposition.TAMPERING,
    )


def _in_tree(tree: merkle.MemoryTree, signed: SignedCheckpoint) -> bool:
    c = signed.checkpoint
    return c.size <= tree.size and tree.root(c.size) == c.root


def _consistent(run: _Run, old: SignedCheckpoint, new: SignedCheckpoint) -> bool:
    """Whether two checkpoints are one history (in whichever order they came): True when the
    host's ledger gives both roots, or the log's own tiles prove it; SplitView when those
    tiles cannot link them; False (and a note) when there is nothing to check it with yet."""
    first, second = (old, new) if old.checkpoint.size <= new.checkpoint.size else (new, old)
    if _in_tree(run.tree, first) and _in_tree(run.tree, second):
        return True
    a, b = first.checkpoint.size, second.checkpoint.size
    try:
        proof = merkle.consistency_proof(run.log_tiles(b), a, b)
    except tiles.TileError as exc:
        run.notes.append(f"cannot check {new.checkpoint.describe()} against the last: {exc}")
        return False
    check_consistent(first, second, proof)
    return True


def _covered(run: _Run, signed: SignedCheckpoint) -> int | None:
    """How many of the host's entries the checkpoint covers; None (and a critical finding) if
    the host's ledger is not the history it signs."""
    c, have = signed.checkpoint, run.tree.size
    try:
        if c.size <= have:
            if run.tree.root(c.size) != c.root:
                raise merkle.ProofError(f"its first {c.size} entries give another root")
            return c.size
        proof = merkle.consistency_proof(run.log_tiles(c.size), have, c.size)
        merkle.verify_consistency(have, c.size, run.tree.root(), c.root, proof)
        return have
    except tiles.TileError as exc:
        run.notes.append(f"cannot prove the ledger's {have} entries are in {c.describe()}: {exc}")
        return 0
    except merkle.ProofError as exc:
        text = f"the host's exception ledger is not the history witnessed in {c.describe()}: {exc}"
        run.findings.append(_invalid(run.settings, text))
        return None


def _live(state: LedgerState, when: datetime) -> dict[int, Request]:
    return {r.id: r for r in state.requests.values() if r.live(when)}


def _state_after(entries: Sequence[Entry]) -> LedgerState:
    state = LedgerState()
    for entry in entries:  # verified already (ledger.load): the rules cannot refuse them now
        state.apply(entry)
    return state


# The tree of each ledger's entries, by path: extended as entries are appended (each leaf is
# hashed once, not at every gate pass: a leaf is canonical JSON, ~0.1 ms).
_TREES: dict[Path, tuple[str, merkle.MemoryTree]] = {}


def _tree(path: Path, entries: Sequence[Entry]) -> merkle.MemoryTree:
    kept = _TREES.get(path)
    tree = merkle.MemoryTree()
    # entries verified as a chain: the same hash at the same place means the same prefix
    if kept is not None and 0 < kept[1].size <= len(entries):
        tree = kept[1] if entries[kept[1].size - 1].hash == kept[0] else tree
    for entry in entries[tree.size :]:
        tree.append(merkle.leaf_hash(store.leaf_bytes(entry)))
    if entries:
        _TREES[path] = (entries[-1].hash, tree)
    return tree


def _not_witnessed(
    run: _Run, pending: list[Request], size: int, latest: SignedCheckpoint | None, found: Cosigners
) -> Finding:
    s = run.settings
    seqs = sorted(
        e.seq
        for e in run.entries[size:]
        if e.seq in {r.id for r in pending} or e.subject in {r.id for r in pending}
    )
    named = "; ".join(f"#{r.id} ({r.vendor})" for r in pending)
    upto = f"witnessed up to entry {size}" if size else "no entry witnessed yet"
    if latest is None:
        newest = "no checkpoint could be read"
    else:
        newest = f"the newest checkpoint, {latest.checkpoint.describe()}, is " + quorum_text(
            found, s.quorum
        )
    summary = (
        f"{len(pending)} exception(s) not under a witnessed checkpoint, not applied: {named} "
        f"(entries {', '.join(map(str, seqs))}; {upto}); {newest}"
    )
    evidence: Evidence = {
        "exceptions": [r.id for r in pending],
        "entries": seqs,
        "witnessed_size": size,
        "cosigned_by": list(found.valid),
        "future_dated": list(found.future),
        "quorum": s.quorum,
        "witnesses": len(s.witnesses),
    }
    return finding(SURFACE, "exception-not-witnessed", f"exception ledger {s.log.name}",
                   summary, evidence, disposition=Disposition.SUSPICIOUS)  # fmt: skip


def _accept(run: _Run, signed: SignedCheckpoint, before: SignedCheckpoint | None) -> None:
    """Remember the newest witnessed checkpoint (a host that cannot write its state still
    gates, it only cannot tell a later split view from this one)."""
    if before is not None and before.checkpoint.size >= signed.checkpoint.size:
        return
    try:
        key = rotation.open_announced(signed.encoded, run.settings.log, run.entries)[1]
        client.remember(_state(run.settings), key.vkey, signed)
    except TransparencyError as exc:
        run.notes.append(f"cannot remember the witnessed checkpoint: {exc}")
    except OSError as exc:
        run.notes.append(f"cannot remember the witnessed checkpoint: {exc.strerror or exc}")


@dataclass(frozen=True)
class _Seen:
    witnessed: SignedCheckpoint | None  # the newest witnessed checkpoint
    latest: SignedCheckpoint | None  # the published one, witnessed or not
    found: Cosigners  # who cosigned the published one
    before: SignedCheckpoint | None  # the one this host accepted last


def _newest(run: _Run, clock: int) -> _Seen | None:
    """What the host has to go by; None after a split view."""
    before, latest = _remembered(run), _fetched(run)
    found = Cosigners((), ())
    if latest is not None:
        found = cosigners(latest.note, run.settings.witnesses, clock)
    try:
        if before is not None and latest is not None and not _consistent(run, before, latest):
            latest, found = None, Cosigners((), ())  # not to be taken until it can be checked
    except SplitView as exc:
        run.findings.append(split_view_finding(exc))
        return None
    quorum = run.settings.quorum
    witnessed = latest if latest is not None and len(found.valid) >= quorum else None
    # the one accepted before, if newer and still witnessed under this config's witnesses
    if (
        before is not None
        and (witnessed is None or before.checkpoint.size > witnessed.checkpoint.size)
        and len(cosigners(before.note, run.settings.witnesses, clock).valid) >= quorum
    ):
        witnessed = before
    return _Seen(witnessed, latest, found, before)


def gate(
    path: Path, settings: GateSettings, now: datetime | None = None, clock: int | None = None
) -> Gated:
    """The exceptions of the ledger at `path` that are live at `now` and witnessed; LedgerError
    if the ledger does not verify (it grants nothing then, as without the gate)."""
    check_witness_keys(settings.witnesses, settings.quorum)
    loaded = ledger.load(path)
    run = _Run(settings, loaded.entries, _tree(path, loaded.entries), [], [])
    clock = int(time.time()) if clock is None else clock
    seen = _newest(run, clock)
    covered: int | None = None
    if seen is not None:
        covered = _covered(run, seen.witnessed) if seen.witnessed is not None else 0
        if seen.witnessed is not None and covered is not None:
            _accept(run, seen.witnessed, seen.before)
    if seen is None or covered is None:  # a split view, or not the witnessed history
        return Gated((), tuple(run.findings), 0, tuple(run.notes))
    when = now or datetime.now(UTC)
    every = _live(loaded.state, when)
    under = (
        every if covered == len(run.entries) else _live(_state_after(run.entries[:covered]), when)
    )
    applied = tuple(r for i, r in sorted(every.items()) if i in under)
    pending = [r for i, r in sorted(every.items()) if i not in under]
    if pending:
        run.findings.append(_not_witnessed(run, pending, covered, seen.latest, seen.found))
    lapsed = tuple(lapses(loaded.state.requests.values(), run.entries, when))
    return Gated(applied, tuple(run.findings), covered, tuple(run.notes), lapsed)


_CACHE: dict[tuple[Path, GateSettings], tuple[object, float, Gated]] = {}


def _ledger_key(path: Path) -> object:
    """What changes when the ledger does: its head, or for an export (the fleet's copy) the
    file's identity, size and time; None if neither can be asked (never cached then)."""
    head = ledger.head_of(path)
    if head is not None:
        return head
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _checkpoint_key(settings: GateSettings) -> object:
    """For a checkpoint in a directory, its file's identity and time (a witness round shows at
    once); for a URL nothing (REFRESH decides when it is fetched again)."""
    if settings.checkpoint.startswith(("http://", "https://")):
        return ()
    try:
        st = os.stat(Path(settings.checkpoint) / "checkpoint")
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def cached_gate(path: Path, settings: GateSettings) -> Gated:
    """`gate`, asked again when the ledger or a local checkpoint changed, or REFRESH seconds
    went by."""
    ledger_key, now = _ledger_key(path), time.monotonic()
    key = None if ledger_key is None else (ledger_key, _checkpoint_key(settings))
    kept = _CACHE.get((path, settings))
    if kept is not None and key is not None and kept[0] == key and now - kept[1] < REFRESH:
        return kept[2]
    gated = gate(path, settings)
    _CACHE[(path, settings)] = (key, now, gated)
    return gated


class GateSurface:
    """The gate's findings as a scan surface of their own (`transparency`), so a scan report
    shows them beside the findings the withheld exceptions leave standing."""

    name = SURFACE
    title = "Exception ledger witnesses"

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)

    def collect(self, kernel: Kernel) -> SurfaceState[tuple[()]]:
        return SurfaceState(SURFACE, ())

    def assess(self, state: SurfaceState[tuple[()]]) -> list[Finding]:
        return list(self.findings)
