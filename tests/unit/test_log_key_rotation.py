"""Log-key rotation with real keys, a real ledger made a log, real witnesses on 127.0.0.1 and a
published site served over HTTP: the rotation entry (signed by the owner and the old log key),
checkpoints signed by the new key after it, and the verifiers (`ledger verify --url`, the
host's gate) following the rotation only through that entry."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from support.tlog import serve
from support.witnesses import World, world

from patchguard.cli import main
from patchguard.findings import Severity
from patchguard.policy import ledger
from patchguard.policy.exceptions import set_max_expiry
from patchguard.policy.ledger import LedgerError
from patchguard.policy.rules import rotation_statement
from patchguard.policy.transparency import note, publish, store
from patchguard.policy.transparency.checkpoint import open_checkpoint, parse_checkpoint
from patchguard.policy.transparency.client import remembered
from patchguard.policy.transparency.gate import gate
from patchguard.policy.transparency.note import ED25519, NoteError, Signer, Verifier
from patchguard.policy.transparency.rotation import open_announced, rotate
from patchguard.policy.transparency.witness import Forbidden, Witness
from patchguard.signing import HostKey

__all__ = ["world"]  # the fixture (tests/support/witnesses.py)


def grow(world: World) -> None:
    set_max_expiry(world.log.path, world.log.owner, 40)


def notes(path: Path) -> dict[int, bytes]:
    conn = sqlite3.connect(path)
    try:
        return dict(store.checkpoint_notes(conn))
    finally:
        conn.close()


def rotated(world: World, tmp_path: Path) -> tuple[int, Verifier, Verifier]:
    """The world's log rotated to a new key: (the rotation entry, old key, new key)."""
    old = note.parse_vkey(world.log.vkey())
    done = rotate(world.log.path, world.log.owner, tmp_path / "keys" / "log2.key")
    new = note.parse_vkey(world.log.vkey())
    return done.entry.seq, old, new


def test_the_rotation_entry_hands_signing_to_the_new_key(world: World, tmp_path: Path) -> None:
    seq, old, new = rotated(world, tmp_path)
    assert new.name == old.name and new != old
    entry = ledger.load(world.log.path).entries[-1]
    assert entry.seq == seq and entry.data["from"] == old.vkey and entry.data["to"] == new.vkey
    open_checkpoint(notes(world.log.path)[seq], old)  # the old key vouches for its successor
    grow(world)
    after = notes(world.log.path)[seq + 1]
    open_checkpoint(after, new)
    with pytest.raises(NoteError):
        open_checkpoint(after, old)
    entries = ledger.load(world.log.path).entries
    assert open_announced(after, old, entries)[1] == new  # followed through the entry
    new_signer = Signer(new.name, ED25519, HostKey.load(tmp_path / "keys" / "log2.key"))
    early = note.sign(note.parse(notes(world.log.path)[seq]).text, [new_signer]).encode()
    with pytest.raises(NoteError, match="does not let sign a tree of that size"):
        open_announced(early, old, entries)  # the new key signing the rotation's own tree
    assert main(["ledger", "verify", "--ledger", str(world.log.path)]) == 0


def test_a_retired_key_signing_on_is_refused(world: World, tmp_path: Path) -> None:
    seq, old, _ = rotated(world, tmp_path)
    entries = ledger.load(world.log.path).entries
    old_signer = Signer(old.name, ED25519, HostKey.load(world.log.log_key))
    text = notes(world.log.path)[seq].decode().split("\n\n")[0] + "\n"
    moved = text.replace(f"\n{seq}\n", f"\n{seq + 1}\n", 1)  # a tree past the rotation
    forged = note.sign(moved, [old_signer]).encode()
    with pytest.raises(NoteError, match="does not let sign a tree of that size"):
        open_announced(forged, old, entries)


def payload(old: Verifier, new: Verifier, signer: HostKey) -> dict[str, str]:
    signature = signer.sign(rotation_statement(old.vkey, new.vkey))
    return {"policy": "log_key", "from": old.vkey, "to": new.vkey,
            "log_signature": note.b64encode(signature)}  # fmt: skip


def test_the_rules_refuse_a_rotation_without_both_signatures(world: World) -> None:
    old = note.parse_vkey(world.log.vkey())
    log_key = HostKey.load(world.log.log_key)
    new = Verifier(old.name, ED25519, HostKey.generate().public_key_bytes())
    path, owner = world.log.path, world.log.owner
    with pytest.raises(LedgerError, match="lacks the policy role"):
        ledger.append(path, world.vendor, "policy", payload(old, new, log_key))
    with pytest.raises(LedgerError, match="not the old log key's signature"):
        ledger.append(path, owner, "policy", payload(old, new, HostKey.generate()))
    other = Verifier("another.example/log", ED25519, new.public_key)
    with pytest.raises(LedgerError, match="another key under the log's name"):
        ledger.append(path, owner, "policy", payload(old, other, log_key))
    bad = {**payload(old, new, log_key), "to": "not a key"}
    with pytest.raises(LedgerError, match=r"payload\.to"):
        ledger.append(path, owner, "policy", bad)
    ledger.append(path, owner, "policy", payload(old, new, log_key))
    third = Verifier(old.name, ED25519, HostKey.generate().public_key_bytes())
    with pytest.raises(LedgerError, match=r"payload\.from is not the log's key"):
        ledger.append(path, owner, "policy", payload(old, third, log_key))  # old is retired


def test_verify_url_follows_the_rotation_and_pins_the_new_key(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.publish()
    state = str(tmp_path / "state")
    with serve(world.site) as url:
        args = ["ledger", "verify", "--url", url, "--state", state]
        assert main([*args, "--vkey", world.log.vkey()]) == 0
        seq, old, new = rotated(world, tmp_path)
        grow(world)
        world.publish()
        capsys.readouterr()
        assert main(args) == 0, capsys.readouterr().err
        kept = remembered(Path(state), old.name)
        assert kept is not None and kept.vkey == new.vkey
        assert parse_checkpoint(note.parse(kept.checkpoint).text).size == seq + 1
        grow(world)
        world.publish()
        assert main(args) == 0  # the new key pinned: a plain consistency check


def test_verify_url_refuses_a_key_never_announced(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.publish()
    state = str(tmp_path / "state")
    vkey = world.log.vkey()
    with serve(world.site) as url:
        args = ["ledger", "verify", "--url", url, "--state", state]
        assert main([*args, "--vkey", vkey]) == 0
        grow(world)  # still the old key
        world.publish()
        rotated_away = forge_unannounced(world)
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "not signed by a known key" in err and "\n" not in err
        assert rotated_away  # the forged note was published


def forge_unannounced(world: World) -> bytes:
    """The published checkpoint re-signed by a fresh key under the log's name."""
    site = world.site / "checkpoint"
    text = note.parse(site.read_bytes()).text
    stranger = Signer(note.parse_vkey(world.log.vkey()).name, ED25519, HostKey.generate())
    forged = note.sign(text, [stranger]).encode()
    site.write_bytes(forged)
    return forged


def rewitnessed(world: World) -> World:
    """The witnesses given the log's new key beside the old one (their config; their state,
    which holds a checkpoint of the old key, kept)."""
    key = note.parse_vkey(world.log.vkey())
    ws = tuple(Witness(w.signer, (*w.logs, (key.name, key)), w.state) for w in world.witnesses)
    return dataclasses.replace(world, witnesses=ws)


def test_the_gate_follows_the_rotation_entry(world: World, tmp_path: Path) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses[:2])
    assert [r.id for r in world.gate().applied] == [seq]  # pins and remembers the old key
    settings = world.settings()
    rotation_seq, old, new = rotated(world, tmp_path)
    second = world.request()
    world.approve(second)
    world.publish()
    stale = world.collect(*world.witnesses[:2])  # the witnesses still pin the old key
    assert stale.cosigned == 0
    renewed = rewitnessed(world)
    assert renewed.collect(*renewed.witnesses[:2]).cosigned == 2
    gated = gate(world.log.path, settings)  # the host's config still names the old key
    assert [r.id for r in gated.applied] == [seq, second] and gated.findings == ()
    assert gated.witnessed == rotation_seq + 2
    kept = remembered(world.host_state / "witnessed", old.name)
    assert kept is not None and kept.vkey == new.vkey
    fresh = dataclasses.replace(world.settings(), state_dir=tmp_path / "fresh")  # pins the new
    assert [r.id for r in gate(world.log.path, fresh).applied] == [seq, second]


def test_the_gate_refuses_a_key_never_announced_as_critical(world: World) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses[:2])
    assert [r.id for r in world.gate().applied] == [seq]
    forge_unannounced(world)
    gated = world.gate()
    assert [r.id for r in gated.applied] == [seq]  # under the checkpoint accepted before
    (found,) = [f for f in gated.findings if f.technique == "ledger-checkpoint-invalid"]
    assert found.severity == Severity.CRITICAL and "not signed by a known key" in found.summary


def test_a_host_behind_the_rotation_waits_and_is_not_alarmed(world: World, tmp_path: Path) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses[:2])
    host_copy = tmp_path / "host-ledger.db"
    shutil.copyfile(world.log.path, host_copy)  # the host's copy, before the rotation
    settings = world.settings()
    assert [r.id for r in gate(host_copy, settings).applied] == [seq]
    rotated(world, tmp_path)
    grow(world)
    world.publish()
    gated = gate(host_copy, settings)  # the host's config names the old key
    assert [r.id for r in gated.applied] == [seq] and gated.findings == ()
    assert any("does not announce yet" in n for n in gated.notes)
    shutil.copyfile(world.log.path, host_copy)  # the host fetches the ledger: it follows
    renewed = rewitnessed(world)
    renewed.collect(*renewed.witnesses[:2])
    later = gate(host_copy, settings)
    assert [r.id for r in later.applied] == [seq] and later.findings == ()
    assert later.witnessed == len(ledger.load(host_copy).entries)


def test_the_rotate_command(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner_key = tmp_path / "keys" / "owner.key"
    argv = ["ledger", "rotate-log-key", "--ledger", str(world.log.path), "--key", str(owner_key),
            "--new-log-key", str(tmp_path / "keys" / "log2.key")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rotates the log key" in out and world.log.vkey() in out
    assert publish.load_log(world.log.path).size == len(ledger.load(world.log.path).entries)
    missing = [*argv[:5], str(tmp_path / "keys" / "missing.key"), *argv[6:]]
    assert main(missing) == 2 and "missing.key" in capsys.readouterr().err


def reading_tiles(world: World) -> World:
    """The witnesses told where the log publishes its tiles (their key config unchanged)."""
    origin = note.parse_vkey(world.log.vkey()).name
    ws = tuple(
        dataclasses.replace(w, published=((origin, str(world.site)),)) for w in world.witnesses
    )
    return dataclasses.replace(world, witnesses=ws)


def test_a_witness_follows_a_rotation_proven_in_the_checkpoint_it_holds(
    world: World, tmp_path: Path
) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses[:2])
    settings = world.settings()
    rotated(world, tmp_path)
    world.publish()  # the rotation's own checkpoint, signed by the old key
    assert world.collect(*world.witnesses[:2]).cosigned == 2  # now they hold it
    grow(world)
    world.publish()  # signed by the new key
    assert world.collect(*world.witnesses[:2]).cosigned == 0  # no tiles to prove it with
    following = reading_tiles(world)
    assert following.collect(*following.witnesses[:2]).cosigned == 2
    gated = gate(world.log.path, settings)
    assert [r.id for r in gated.applied] == [seq] and gated.findings == ()
    assert gated.witnessed == len(ledger.load(world.log.path).entries)
    grow(world)
    world.publish()  # the witnesses trust the key they moved to: no tiles read now
    assert world.collect(*world.witnesses[:2]).cosigned == 2


def test_a_witness_refuses_a_key_it_cannot_prove(world: World, tmp_path: Path) -> None:
    world.publish()
    world.collect(world.witnesses[0])  # w1 holds the log at its size before the rotation
    rotated(world, tmp_path)
    grow(world)
    world.publish()  # the rotation is not in the checkpoint w1 holds
    following = reading_tiles(world)
    assert following.collect(following.witnesses[0]).cosigned == 0
    held = following.witnesses[0].last(note.parse_vkey(world.log.vkey()).name)
    assert held is not None and held[1].vkey != world.log.vkey()  # still the old key
    view = publish.load_log(world.log.path)
    stranger = Signer(view.config.origin, ED25519, HostKey.generate())
    forged = note.sign(view.latest.note.text, [stranger])
    size = held[0].checkpoint.size
    proof = view.tree.consistency_proof(size, view.size)
    signed = dataclasses.replace(view.latest, note=forged)
    body = publish.proof_text(f"old {size}", proof, signed).encode()
    with pytest.raises(Forbidden, match="no rotation to its key proven"):
        following.witnesses[0].add_checkpoint(body, int(time.time()))


def test_witness_log_tiles_must_name_an_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["witness", "vkey", "--key", str(tmp_path / "w.key"), "--create", "--name", "w/1"]
    assert main([*base, "--log-tiles", "https://log.example/tiles"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("expected ORIGIN=URL (or directory)")
    assert main([*base, "--log-tiles", "log.example/x=https://log.example/tiles"]) == 0
