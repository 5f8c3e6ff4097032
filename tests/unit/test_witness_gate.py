"""The host's witness gate, with real keys, a real ledger made a log, and real witnesses
(`witness serve` on 127.0.0.1, free ports): an exception applies only under a checkpoint
cosigned by K of the N configured witnesses and only if its entries are in that checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
from support.bpf_records import ITERATOR, bpf_program
from support.tlog import make_log
from support.witnesses import PIN, World, running, world

from patchguard.findings import Disposition, Finding, Severity
from patchguard.policy import exceptions as ops
from patchguard.policy import ledger
from patchguard.policy.match import exceptions_policy
from patchguard.policy.transparency import collect, note, publish
from patchguard.policy.transparency.checkpoint import (
    MAX_SKEW,
    cosign,
    open_checkpoint,
    verify_cosigned,
)
from patchguard.policy.transparency.gate import Gated, gate
from patchguard.policy.transparency.note import NoteError, Signer
from patchguard.signing import HostKey
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.ebpf import BpfLink, EbpfRecords

__all__ = ["world"]  # the fixture (tests/support/witnesses.py)


def hook_finding(policy_of: Gated) -> Finding:
    """A finding about the pinned bpftool iterator, through the gated exceptions' policy."""
    prog = bpf_program(**ITERATOR)
    link = BpfLink(91, "iter", 111, None, "task", (), (PIN,))
    seen = Finding("ebpf", "sensitive-hook", Severity.MEDIUM, "prog 111", "runs on task")
    seen = dataclasses.replace(seen, evidence={"prog_id": 111})
    state = SurfaceState("ebpf", EbpfRecords.of((prog, link)))
    (out,) = exceptions_policy(policy_of.applied)([seen], state)
    return out


def techniques(gated: Gated) -> list[tuple[str, Severity]]:
    return [(f.technique, f.severity) for f in gated.findings]


def test_k_of_n_cosigned_the_exception_applies(world: World) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    done = world.collect(*world.witnesses[:2])  # w3 is offline: 2 of 3, quorum 2
    assert done.cosigned == 2
    gated = world.gate()
    assert [r.id for r in gated.applied] == [seq] and gated.findings == ()
    assert gated.witnessed == 5
    assert hook_finding(gated).disposition == Disposition.ALLOWED


def test_k_minus_one_cosigned_nothing_applies_and_it_says_so(world: World) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(world.witnesses[0])
    gated = world.gate()
    assert gated.applied == () and techniques(gated) == [
        ("exception-not-witnessed", Severity.MEDIUM)
    ]
    found = gated.findings[0]
    assert f"#{seq} (Debian (bpftool packaging))" in found.summary
    assert "cosigned by 1 of the 2 witnesses needed (witness.example/w1)" in found.summary
    assert found.evidence["entries"] == [seq, seq + 1]
    assert found.evidence["cosigned_by"] == ["witness.example/w1"]
    assert hook_finding(gated).disposition == Disposition.SUSPICIOUS  # the finding stays


def test_an_entry_after_the_witnessed_checkpoint_waits_for_the_witnesses(world: World) -> None:
    seq = world.request()
    world.publish()
    world.collect(*world.witnesses)  # witnessed at size 4: the request, not its approval
    assert world.gate().witnessed == 4  # the host accepts it (and remembers it)
    world.approve(seq)
    world.publish()  # size 5, signed by the log only
    gated = world.gate()
    assert gated.applied == () and gated.witnessed == 4
    found = gated.findings[0]
    assert found.technique == "exception-not-witnessed"
    assert found.evidence["entries"] == [seq + 1] and found.evidence["witnessed_size"] == 4
    assert "cosigned by 0 of the 2" in found.summary
    world.collect(*world.witnesses[1:])  # re-witnessed: now it applies
    assert [r.id for r in world.gate().applied] == [seq]
    ops.revoke(world.log.path, world.approver, seq, "withdrawn")
    world.publish()  # a revocation takes effect before any witness sees it
    assert world.gate().applied == ()


def test_a_witness_that_signed_another_history_is_critical(world: World, tmp_path: Path) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses)
    assert [r.id for r in world.gate().applied] == [seq]  # accepted and remembered
    # The operator signs a fork with the same log key, and the same witness keys cosign it
    # (their state wiped, or the witnesses colluding): a different history.
    fork = make_log(tmp_path / "fork", world.log.owner, world.log.log_key, [30, 60, 90, 120])
    forked_site = tmp_path / "fork-site"
    fork.publish(forked_site)
    wiped = [dataclasses.replace(w, state=tmp_path / "wiped" / str(i))
             for i, w in enumerate(world.witnesses)]  # fmt: skip
    with running(*wiped) as urls:
        collect.collect(publish.load_log(fork.path), forked_site, urls)
    forked = dataclasses.replace(world.settings(), checkpoint=str(forked_site))
    split = gate(world.log.path, forked)  # the host remembers the honest checkpoint of size 5
    assert split.applied == () and techniques(split) == [("ledger-split-view", Severity.CRITICAL)]
    assert split.findings[0].evidence["checkpoint_seen"] == (world.site / "checkpoint").read_text()
    fresh = dataclasses.replace(forked, state_dir=tmp_path / "fresh-host")
    other = gate(world.log.path, fresh)  # no memory: the fork is not the host's ledger
    assert other.applied == ()
    assert techniques(other) == [("ledger-checkpoint-invalid", Severity.CRITICAL)]
    assert "not the history witnessed" in other.findings[0].summary


def test_a_checkpoint_that_does_not_verify_is_critical(world: World) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses)
    stranger = Signer(world.log.vkey().split("+")[0], note.ED25519, HostKey.generate())
    text = note.parse((world.site / "checkpoint").read_bytes()).text
    (world.site / "checkpoint").write_bytes(note.sign(text, [stranger]).encode())
    gated = world.gate()  # the host remembered nothing yet: nothing to fall back on
    assert gated.applied == ()
    assert techniques(gated)[0] == ("ledger-checkpoint-invalid", Severity.CRITICAL)
    assert "does not verify" in gated.findings[0].summary


def test_an_unreachable_checkpoint_falls_back_to_the_last_witnessed(world: World) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses)
    assert [r.id for r in world.gate().applied] == [seq]
    (world.site / "checkpoint").unlink()
    gated = world.gate()
    assert [r.id for r in gated.applied] == [seq] and gated.findings == ()
    assert "no checkpoint" in gated.notes[0]


def test_future_dated_cosignatures_are_refused(world: World) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    signed = publish.load_log(world.log.path).latest
    ahead = int(time.time()) + MAX_SKEW + 600
    w1, w2, _ = world.witnesses
    with pytest.raises(NoteError, match="ahead of this clock"):
        cosign(signed, w1.signer, ahead)
    request = publish.prove_consistency(publish.load_log(world.log.path), 0).encode()
    with pytest.raises(NoteError, match="ahead of this clock"):
        w1.add_checkpoint(request, now=ahead)  # the witness will not date one in the future
    now = int(time.time())
    forged = note.sign(signed.note.text, [w1.signer], ahead, keep=signed.note.signatures)
    both = note.sign(forged.text, [w2.signer], now, keep=forged.signatures).encode()
    keys = [w.signer.verifier for w in world.witnesses]
    log_key = note.parse_vkey(world.log.vkey())
    with pytest.raises(NoteError, match=r"refused as dated over 300 s in the future: .*w1"):
        verify_cosigned(both, log_key, keys, 2)
    assert verify_cosigned(both, log_key, keys, 1).checkpoint.size == 5
    assert verify_cosigned(both, log_key, keys, 2, now=ahead).checkpoint.size == 5
    (world.site / "checkpoint").write_bytes(both)
    gated = world.gate()
    assert gated.applied == () and gated.findings[0].evidence["future_dated"] == [
        "witness.example/w1"
    ]


def test_collecting_again_keeps_one_line_per_witness(world: World) -> None:
    world.publish()
    world.collect(*world.witnesses[:2])
    world.collect(*world.witnesses[:2])  # a second round: 409, retry from the size held, 200
    cosigned = (world.site / "checkpoint").read_bytes()
    assert len(note.parse(cosigned).signatures) == 3  # the log's and one per witness
    world.publish()  # republishing the same checkpoint keeps the cosignatures
    assert (world.site / "checkpoint").read_bytes() == cosigned
    log_key = note.parse_vkey(world.log.vkey())
    assert open_checkpoint(cosigned, log_key).checkpoint.size == 3


def test_a_host_copy_behind_the_checkpoint_is_proven_in_it_by_the_tiles(
    world: World, tmp_path: Path
) -> None:
    seq = world.request()
    world.approve(seq)
    copy = tmp_path / "host-ledger.json"  # what the host has: 5 entries, an export
    copy.write_text(json.dumps(ledger.export_json(world.log.path)))
    ops.set_max_expiry(world.log.path, world.log.owner, 90)  # entry 6: not on the host yet
    world.publish()
    world.collect(*world.witnesses)
    gated = gate(copy, world.settings())
    assert [r.id for r in gated.applied] == [seq] and gated.witnessed == 5
    shutil.rmtree(world.site / "tile")  # no tiles: nothing proves the copy is in it
    fresh = dataclasses.replace(world.settings(), state_dir=tmp_path / "fresh")
    blind = gate(copy, fresh)
    assert blind.applied == () and "cannot prove the ledger's 5 entries" in blind.notes[0]
    assert [f.technique for f in blind.findings] == ["exception-not-witnessed"]
    ops.set_max_expiry(world.log.path, world.log.owner, 91)
    world.publish()  # size 7, not witnessed; its tiles are back
    world.collect(*world.witnesses)  # witnessed again, and the remembered 6 is consistent
    assert [r.id for r in gate(copy, world.settings()).applied] == [seq]
