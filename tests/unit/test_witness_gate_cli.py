"""The gate's commands: `ledger witness-collect` against live witness servers, the guard
config's `[transparency]` table in `config check`, and `scan --config` applying the gate."""

from __future__ import annotations

import http.server
import json
import socket
from pathlib import Path

import pytest
from support.tlog import ORIGIN, make_log
from support.tlog import serve as serve_dir
from support.witnesses import World, running, world

from patchguard.cli import main
from patchguard.policy.transparency import note
from patchguard.policy.transparency import serve as transparency_serve
from patchguard.policy.transparency.checkpoint import verify_cosigned

__all__ = ["world"]  # the fixture (tests/support/witnesses.py)


def vkeys(w: World) -> tuple[str, list[str]]:
    return w.log.vkey(), [x.signer.verifier.vkey for x in w.witnesses]


def config(tmp_path: Path, table: str, ledger: Path | None = None) -> Path:
    path = tmp_path / "guard.toml"
    held = f'ledger = "{ledger}"\n' if ledger else ""
    path.write_text(f'[guard]\nkey = "{tmp_path / "host.key"}"\n{held}\n{table}')
    return path


def table(w: World, quorum: int = 2, log: str | None = None) -> str:
    log_key, witnesses = vkeys(w)
    return (
        f'[transparency]\nlog_vkey = "{log or log_key}"\nwitnesses = {json.dumps(witnesses)}\n'
        f'quorum = {quorum}\ncheckpoint = "{w.site}"\nstate_dir = "{w.host_state}"\n'
    )


def dead_url() -> str:
    """A loopback URL nobody listens on (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_witness_collect_against_two_live_witnesses(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.publish()
    base = ["ledger", "witness-collect", "--ledger", str(world.log.path)]
    with running(*world.witnesses[:2]) as urls:
        args = [*base, "--witness", urls[0], "--witness", urls[1], str(world.site)]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert out.count(": cosigned\n") == 2 and "2 of 2 witnesses cosigned" in out
        cosigned = (world.site / "checkpoint").read_bytes()
        keys = [w.signer.verifier for w in world.witnesses]
        log_key = note.parse_vkey(world.log.vkey())
        assert verify_cosigned(cosigned, log_key, keys, 2).checkpoint.size == 3
        world.request()
        world.publish()
        offline = dead_url()  # one witness down: the other's cosignature is written all the same
        assert main([*base, "--witness", urls[0], "--witness", offline, str(world.site)]) == 1
    out = capsys.readouterr().out
    assert f"{offline}: nothing: cannot reach it" in out and "1 of 2 witnesses" in out
    now = (world.site / "checkpoint").read_bytes()
    assert verify_cosigned(now, log_key, keys, 1).checkpoint.size == 4
    with pytest.raises(note.NoteError, match="cosigned by 1 of the 2"):
        verify_cosigned(now, log_key, keys, 2)


def test_witness_collect_bad_input_is_one_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["ledger", "witness-collect", "--ledger", str(world.log.path), "--witness", dead_url()]
    assert main([*base, str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere/checkpoint: cannot read" in err
    other = make_log(tmp_path / "other", world.log.owner, tmp_path / "other.key", [30])
    other.publish(tmp_path / "other-site")  # another log's checkpoint in DIR
    assert main([*base, str(tmp_path / "other-site")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a checkpoint of this log" in err


def test_config_check_shows_the_gate_or_the_unwitnessed_mode(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(config(tmp_path, table(world)))]) == 0
    out = capsys.readouterr().out
    assert "cosigned by 2 of 3 witnesses (witness.example/w1, witness.example/w2," in out
    assert main(["config", "check", str(config(tmp_path, ""))]) == 0
    assert "unwitnessed mode" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda t: t.replace("quorum = 2", "quorum = 4"), "transparency.quorum: 4 must be from 1"),
        (lambda t: t.replace("quorum = 2", "quorum = 0"), "transparency.quorum: 0 must be from 1"),
        (lambda t: t.replace("quorum = 2", 'quorum = "2"'), "transparency.quorum: expected"),
        (lambda t: t.replace('log_vkey = "', 'log_vkey = "x'), "transparency.log_vkey: "),
        (lambda t: t.replace("+A", "+B", 1), "transparency.log_vkey: "),
        (lambda t: t.replace('witnesses = ["', 'witnesses = ["w+', 1), "transparency.witnesses[0]"),
        (lambda t: t.replace("witnesses = [", "witnesses = [] #"), "transparency.witnesses: "),
        (lambda t: t.replace("checkpoint = ", "checkpoints = "), "transparency.checkpoint"),
        (lambda t: t + "extra = 1\n", "transparency.extra: unknown key"),
    ],
)
def test_config_check_refuses_a_bad_transparency_table(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object, error: str
) -> None:
    assert callable(change)
    path = config(tmp_path, change(table(world)))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: " in err and error in err, err


def test_a_log_key_given_as_a_witness_key_is_refused(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, witnesses = vkeys(world)
    path = config(tmp_path, table(world, log=witnesses[0]))
    assert main(["config", "check", str(path)]) == 2
    assert "transparency.log_vkey: not a log key (type 0x01)" in capsys.readouterr().err


def findings_of(doc: dict[str, object]) -> list[dict[str, object]]:
    surfaces, findings = doc["surfaces"], doc["findings"]
    assert isinstance(surfaces, list) and isinstance(findings, list)
    assert [s["name"] for s in surfaces] == ["posture", "transparency"]
    return findings


def test_scan_applies_the_gate_its_config_names(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    cfg = config(tmp_path, table(world))
    scan = ["scan", "--json", "--surface", "posture", "--ledger", str(world.log.path)]
    main([*scan, "--config", str(cfg)])
    found = [f for f in findings_of(json.loads(capsys.readouterr().out))
             if f["surface"] == "transparency"]  # fmt: skip
    assert [f["technique"] for f in found] == ["exception-not-witnessed"]
    assert "cosigned by 0 of the 2 witnesses needed" in str(found[0]["summary"])
    world.collect(*world.witnesses)
    main([*scan, "--config", str(cfg)])
    doc = json.loads(capsys.readouterr().out)
    assert not [f for f in findings_of(doc) if f["surface"] == "transparency"]


def test_the_guard_gates_with_its_config_and_without_it_applies_as_before(
    world: World, tmp_path: Path
) -> None:
    from patchguard.guard.config import load_config
    from patchguard.guard.witnessed import guard_policy

    seq = world.request()
    world.approve(seq)
    world.publish()
    gated = load_config(config(tmp_path, table(world), world.log.path))
    policy, why_not, found = guard_policy(gated)
    assert policy is not None and why_not is None
    assert [f.technique for f in found] == ["exception-not-witnessed"]
    plain = load_config(config(tmp_path, "", world.log.path))
    assert plain.transparency is None and guard_policy(plain)[2] == []


def hostile(answer: bytes, status: int = 200) -> type[http.server.BaseHTTPRequestHandler]:
    """A witness that answers every add-checkpoint with `answer`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def line(name: str, key_id: int, signature: bytes) -> bytes:
    return note.Signature(name, key_id, signature).line.encode()


@pytest.mark.parametrize(
    ("answer", "status", "said"),
    [
        (b"x" * 5000, 200, "answered with over 4096 bytes"),
        (b"hello\n", 200, "answered with no cosignature line"),
        (line("witness.example/evil", 7, b"\0" * 64), 200, "not a cosignature"),
        (line(ORIGIN, 7, b"\0" * 72), 200, "not a cosignature (ledger.example.org"),
        (line("witness.example/evil", 7, (2**62).to_bytes(8, "big") + b"\0" * 64), 200,
         "ahead"),
        (b"3\n", 409, "HTTP 409: 3"),  # holds 3, and then still says it holds 3
        (b"9\n", 409, "holds size 9, newer than the published 3"),
        (b"\x1b[31mno\n", 403, "HTTP 403: \\x1b[31mno"),
    ],
)  # fmt: skip
def test_a_hostile_witness_adds_nothing_and_is_named(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answer: bytes,
    status: int,
    said: str,
) -> None:
    world.publish()
    before = (world.site / "checkpoint").read_bytes()
    with serve_dir(tmp_path, hostile(answer, status)) as url:
        args = ["ledger", "witness-collect", "--ledger", str(world.log.path), "--witness", url]
        assert main([*args, str(world.site)]) == 1
    out = capsys.readouterr().out
    assert said in out and "0 of 1 witnesses" in out, out
    assert "\x1b" not in out  # text from a witness is shown escaped
    assert (world.site / "checkpoint").read_bytes() == before


def test_a_checkpoint_published_meanwhile_is_not_replaced_by_an_older_one(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.publish()
    witness_handler = transparency_serve.handler(world.witnesses[0])

    class PublishFirst(witness_handler):  # type: ignore[misc,valid-type]
        def do_POST(self) -> None:
            if not (world.site / "tile" / "entries" / "000.p" / "4").exists():
                world.request()
                world.publish()  # the operator's next publish lands while the witness answers
            super().do_POST()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_dir(tmp_path, PublishFirst) as url:
        args = ["ledger", "witness-collect", "--ledger", str(world.log.path), "--witness", url]
        assert main([*args, str(world.site)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a newer checkpoint was published meanwhile" in err
    published = note.parse((world.site / "checkpoint").read_bytes())
    assert published.text.split("\n")[1] == "4" and len(published.signatures) == 1
