"""Witnesses: cosign only checkpoints that extend the last one cosigned, catch an operator who
signs two histories, answer C2SP tlog-witness requests over HTTP on 127.0.0.1, and give hosts
the K-of-N cosigned checkpoints they accept (an offline witness delays, never weakens)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.tlog import Log, make_log

from patchguard.cli import main
from patchguard.policy.transparency import note, publish
from patchguard.policy.transparency.checkpoint import SplitView, verify_cosigned
from patchguard.policy.transparency.note import COSIGNATURE, NoteError, Signer
from patchguard.policy.transparency.serve import serve
from patchguard.policy.transparency.witness import (
    Conflict,
    Forbidden,
    UnknownLog,
    Witness,
    cosignature_lines,
    merge_cosignatures,
)
from patchguard.signing import HostKey


@pytest.fixture
def owner(tmp_path: Path) -> HostKey:
    return HostKey.load_or_create(tmp_path / "keys" / "owner.key")


@pytest.fixture
def log(tmp_path: Path, owner: HostKey) -> Log:
    return make_log(tmp_path / "a", owner, tmp_path / "keys" / "log.key", [30, 60])


def witness(tmp_path: Path, log: Log, name: str = "w1") -> Witness:
    signer = Signer(f"witness.example/{name}", COSIGNATURE, HostKey.generate())
    verifier = note.parse_vkey(log.vkey())
    return Witness(signer, ((verifier.name, verifier),), tmp_path / name)


def request(log: Log, old: int) -> bytes:
    return publish.prove_consistency(publish.load_log(log.path), old).encode()


def test_cosigns_each_extension_and_nothing_else(tmp_path: Path, log: Log) -> None:
    w = witness(tmp_path, log)
    first = w.add_checkpoint(request(log, 0), now=1000)
    assert first.checkpoint.size == 3
    log.append(90, hours=5)
    second = w.add_checkpoint(request(log, 3), now=1001)
    assert second.checkpoint.size == 4 and second.note.signed_by(w.signer.verifier) == 1001
    line = cosignature_lines(second, w.signer.verifier)
    assert line.startswith("— witness.example/w1 ") and line.count("\n") == 1
    with pytest.raises(Conflict, match="holds size 4, not 3") as caught:
        w.add_checkpoint(request(log, 3), now=1002)
    assert caught.value.size == 4
    again = w.add_checkpoint(request(log, 4), now=1003)  # the same checkpoint: fine
    assert again.checkpoint == second.checkpoint


def test_an_operator_signing_two_histories_is_caught(
    tmp_path: Path, log: Log, owner: HostKey
) -> None:
    w = witness(tmp_path, log)
    w.add_checkpoint(request(log, 0), now=1000)
    honest = publish.load_log(log.path).latest.encoded
    fork = make_log(tmp_path / "b", owner, log.log_key, [30, 61, 90])  # same key, entry 3 differs
    with pytest.raises(SplitView, match="does not extend") as caught:
        w.add_checkpoint(request(fork, 3), now=1001)
    assert caught.value.first == honest
    assert caught.value.second == publish.load_log(fork.path).latest.encoded
    same_size = make_log(tmp_path / "c", owner, log.log_key, [30, 62])
    with pytest.raises(SplitView, match="two different roots for the same size 3"):
        w.add_checkpoint(request(same_size, 3), now=1002)
    held = w.last(publish.load_log(log.path).latest.checkpoint.origin)
    assert held is not None and held[0].encoded == honest  # the witness still holds the truth


def test_an_unknown_log_a_wrong_key_and_malformed_requests(
    tmp_path: Path, log: Log, owner: HostKey
) -> None:
    impostor = make_log(tmp_path / "x", owner, tmp_path / "keys" / "other.key", [])
    w = witness(tmp_path, log)
    with pytest.raises(Forbidden, match="not signed by a known key"):
        w.add_checkpoint(request(impostor, 0), now=1)  # the origin, but not the log's key
    stranger = Witness(w.signer, (("elsewhere.example/log", w.logs[0][1]),), w.state)
    with pytest.raises(UnknownLog, match="not a log this witness follows"):
        stranger.add_checkpoint(request(log, 0), now=1)
    body = request(log, 0)
    for bad, why in [
        (b"old 01\n\n" + body.split(b"\n\n", 1)[1], "old <size>"),
        (body.replace(b"\n\n", b"\n"), "no blank line"),
        (b"old 0\nAAAA\n\n" + body.split(b"\n\n", 1)[1], "not 32 bytes"),
        (b"old 0\n\xff\n\n", "not ASCII"),
        (b"x" * 80_000, "over"),
        (b"old 9\n\n" + body.split(b"\n\n", 1)[1], "over the checkpoint's size"),
    ]:
        with pytest.raises(NoteError, match=why):
            w.add_checkpoint(bad, now=1)


@contextmanager
def running(w: Witness) -> Iterator[str]:
    server = serve(w, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/add-checkpoint"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def post(url: str, body: bytes) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_witnesses_over_http_and_a_host_quorum(
    tmp_path: Path, log: Log, owner: HostKey, capsys: pytest.CaptureFixture[str]
) -> None:
    w1, w2, w3 = (witness(tmp_path, log, n) for n in ("w1", "w2", "w3"))  # w3 stays offline
    keys = [w.signer.verifier for w in (w1, w2, w3)]
    log_vkey = note.parse_vkey(log.vkey())
    signed = publish.load_log(log.path).latest.encoded
    with running(w1) as url1, running(w2) as url2:
        lines = []
        for url in (url1, url2):
            status, text = post(url, request(log, 0))
            assert status == 200 and text.startswith("— witness.example/")
            lines.append(text)
        assert post(url1, request(log, 0)) == (409, "3\n")
        same_size = make_log(tmp_path / "c", owner, log.log_key, [30, 62])
        assert post(url1, request(same_size, 3))[0] == 409  # tlog-witness: same size, other root
        fork = make_log(tmp_path / "b", owner, log.log_key, [30, 61, 90])
        status, text = post(url1, request(fork, 3))
        assert status == 422 and "split view" in text
        assert "split view" in capsys.readouterr().err
        assert post(url1, b"nonsense")[0] == 400
    cosigned = signed + "".join(lines).encode()
    assert verify_cosigned(cosigned, log_vkey, keys, 2).checkpoint.size == 3
    with pytest.raises(NoteError, match="cosigned by 2 of the 3"):
        verify_cosigned(cosigned, log_vkey, keys, 3)  # the offline one is missing: not yet
    one = signed + lines[0].encode()
    with pytest.raises(NoteError, match="cosigned by 1 of the 2"):
        verify_cosigned(one, log_vkey, keys, 2)
    assert merge_cosignatures(signed, [one, signed + lines[1].encode()]) == cosigned


def test_witness_cli(tmp_path: Path, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--key", str(tmp_path / "w.key"), "--name", "witness.example/cli"]
    assert main(["witness", "vkey", *base, "--create"]) == 0
    wkey = capsys.readouterr().out.strip()
    assert note.parse_vkey(wkey).kind == COSIGNATURE
    req = tmp_path / "req"
    req.write_bytes(request(log, 0))
    args = ["witness", "cosign", *base, "--log", log.vkey(), "--state", str(tmp_path / "s")]
    assert main([*args, str(req)]) == 0
    out = capsys.readouterr().out.encode()
    verify_cosigned(out, note.parse_vkey(log.vkey()), [note.parse_vkey(wkey)], 1)
    req.write_bytes(b"old 0\n")
    assert main([*args, str(req)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no blank line" in err
    assert main([*args, str(tmp_path / "missing")]) == 2
