"""The ledger's log side: making a ledger a log, proving from it, and publishing it as tiles.

`load_log` reads the verified ledger and its checkpoints in one transaction, rebuilds the
tree, and checks that the latest checkpoint is signed by the log's key and matches the
entries (a checkpoint the entries do not give is an error, never published). `publish` writes
the C2SP tlog-tiles layout into a directory: every file through write_atomic, unchanged files
left alone, and the checkpoint last, so a reader never sees a checkpoint whose tiles are not
there yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from patchguard.atomic import write_atomic
from patchguard.policy import ledger
from patchguard.policy.chain import Entry
from patchguard.policy.ledger import LedgerError
from patchguard.policy.transparency import TransparencyError, merkle, note, rotation, store, tiles
from patchguard.policy.transparency.checkpoint import SignedCheckpoint, open_checkpoint
from patchguard.signing import HostKey

MAX_FILE = tiles.MAX_BUNDLE  # nothing published is bigger than a full entry bundle


@dataclass(frozen=True)
class LogView:
    path: Path
    config: store.LogConfig
    entries: tuple[Entry, ...]
    tree: merkle.MemoryTree
    latest: SignedCheckpoint

    @property
    def size(self) -> int:
        return self.latest.checkpoint.size

    @property
    def keys(self) -> tuple[note.Verifier, ...]:
        """The log's keys: the one signing now and every one a rotation retired."""
        return _keys(self.config, self.entries)


def _keys(config: store.LogConfig, entries: Sequence[Entry]) -> tuple[note.Verifier, ...]:
    return (config.verifier, *(note.parse_vkey(r.old) for r in rotation.rotations(entries)))


def _not_a_log(path: Path) -> LedgerError:
    return LedgerError(
        path, "not a transparency log yet (start one with `patchguard ledger log-init`)"
    )


def init_log(path: Path, origin: str, key_path: Path) -> SignedCheckpoint:
    """Make the ledger a log signed by the key at `key_path` (created if missing), and sign
    its first checkpoint over every entry it already has."""
    key = HostKey.load_or_create(key_path)
    with ledger.locked(path) as (conn, loaded):
        try:
            store.configure(conn, origin, key, key_path)
            signed = store.sign_after_append(conn, loaded.entries)
        except TransparencyError as exc:
            raise LedgerError(path, str(exc)) from None
    assert signed is not None
    return open_checkpoint(signed, note.Verifier(origin, note.ED25519, key.public_key_bytes()))


def load_log(path: Path) -> LogView:
    rows, notes, config = ledger.read_log(path)
    loaded = ledger.replay(rows)
    if not loaded.result.ok:
        raise LedgerError(path, f"does not verify: {loaded.result.reason}")
    if config is None or not notes:
        raise _not_a_log(path)
    size, latest = notes[-1]
    tree = store.tree_of(loaded.entries)
    try:  # the newest key, or the one before it for the rotation entry's own checkpoint
        signed = rotation.open_any(latest, _keys(config, loaded.entries))
    except TransparencyError as exc:
        raise LedgerError(path, f"checkpoint {size}: {exc}") from None
    checkpoint = signed.checkpoint
    if checkpoint.size != size or size > tree.size or tree.root(size) != checkpoint.root:
        raise LedgerError(path, f"checkpoint {size} does not match the ledger's entries")
    return LogView(path, config, loaded.entries, tree, signed)


def proof_text(first: str, proof: Sequence[bytes], signed: SignedCheckpoint) -> str:
    """`first` line, one base64 hash per line, a blank line, the checkpoint: for consistency
    (`old N`) exactly the body of a C2SP tlog-witness add-checkpoint request."""
    hashes = "".join(f"{note.b64encode(h)}\n" for h in proof)
    return f"{first}\n{hashes}\n{signed.encoded.decode('utf-8')}"


def prove_inclusion(view: LogView, seq: int) -> str:
    if not 1 <= seq <= view.size:
        raise LedgerError(view.path, f"no entry {seq} under the latest checkpoint ({view.size})")
    proof = view.tree.inclusion_proof(seq - 1, view.size)
    return proof_text(f"index {seq - 1}", proof, view.latest)


def prove_consistency(view: LogView, old: int) -> str:
    if not 0 <= old <= view.size:
        raise LedgerError(view.path, f"no tree of size {old} (the latest has {view.size})")
    return proof_text(f"old {old}", view.tree.consistency_proof(old, view.size), view.latest)


@dataclass(frozen=True)
class Published:
    written: int
    unchanged: int


def _write(path: Path, data: bytes, immutable: bool) -> bool:
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
        if immutable:
            raise LedgerError(path, "a full tile already published with other bytes")
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return True


def files(view: LogView) -> list[tuple[str, bytes]]:
    """Every file of the tlog-tiles layout for the latest checkpoint, the checkpoint last."""
    size = view.size
    out = [(t.path, tiles.tile_data(view.tree, t)) for t in tiles.tiles_for(size)]
    for bundle in tiles.bundles_for(size):
        first = bundle.index * tiles.WIDTH
        chunk = view.entries[first : first + bundle.width]
        try:
            data = tiles.encode_bundle([store.leaf_bytes(e) for e in chunk])
        except TransparencyError as exc:
            raise LedgerError(
                view.path, f"entries {first + 1} to {first + len(chunk)}: {exc}"
            ) from None
        out.append((bundle.path, data))
    out.append(("checkpoint", view.latest.encoded))
    return out


def _check_published(view: LogView, directory: Path) -> None:
    """Refuse to publish over another history: the checkpoint already there, if it is this
    log's, must be one the entries give (same root at its size, not larger)."""
    try:
        with open(directory / "checkpoint", "rb") as f:
            there = f.read(note.MAX_NOTE + 1)
    except FileNotFoundError:
        return
    try:
        old = rotation.open_any(there, view.keys).checkpoint
    except TransparencyError as exc:
        raise LedgerError(directory, f"holds a checkpoint that is not this log's: {exc}") from None
    if old.size > view.tree.size or view.tree.root(old.size) != old.root:
        raise LedgerError(
            directory,
            f"already publishes {old.describe()}, which these entries do not extend: "
            "publishing would show a second history",
        )


def _cosigned_already(path: Path, data: bytes) -> bool:
    """Whether `path` holds this very checkpoint (same note text), say with the cosignature
    lines `ledger witness-collect` appended: republishing must not drop them."""
    try:
        with open(path, "rb") as f:
            return note.parse(f.read(note.MAX_NOTE + 1)).text == note.parse(data).text
    except (FileNotFoundError, TransparencyError):
        return False


def publish(view: LogView, directory: Path) -> Published:
    """Write the tiles (full ones never rewritten with other bytes), the checkpoint last."""
    written = unchanged = 0
    try:
        _check_published(view, directory)
        for name, data in files(view):
            if name == "checkpoint" and _cosigned_already(directory / name, data):
                unchanged += 1  # the same checkpoint, with witnesses' cosignatures kept
            elif _write(
                directory / name, data, immutable=".p/" not in name and name != "checkpoint"
            ):
                written += 1
            else:
                unchanged += 1
    except OSError as exc:
        raise LedgerError(directory, f"cannot publish: {exc.strerror or exc}") from None
    return Published(written, unchanged)
