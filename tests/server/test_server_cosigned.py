"""The fleet server serving the witnessed checkpoint: a live `patchguard server`, two live
witnesses (`witness serve` on 127.0.0.1), `ledger witness-collect` into the operator's
published directory, `patchguard server ledger cosigned` handing the cosignatures to the
server, and a host's gate pointed at the server's `/log` applying an exception under quorum 2."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

from fleet_support import ServerProcess
from support.witnesses import World, running, world
from test_server_tlog import get, import_log, server_cli

from patchguard.cli import main
from patchguard.policy.exceptions import set_max_expiry
from patchguard.policy.transparency import collect, note, publish
from patchguard.policy.transparency.gate import gate
from patchguard.policy.transparency.gate_config import GateSettings
from patchguard.policy.transparency.rotation import rotate
from patchguard.policy.transparency.witness import Witness
from patchguard.signing import HostKey

__all__ = ["world"]  # the fixture (tests/support/witnesses.py)


def at_server(world: World, server: ServerProcess, quorum: int = 2) -> GateSettings:
    return dataclasses.replace(world.settings(quorum), checkpoint=f"{server.url}/log")


def test_a_host_gated_by_the_server_applies_a_cosigned_exception(
    server: ServerProcess, world: World
) -> None:
    seq = world.request()
    world.approve(seq)
    import_log(server, world.log)
    world.publish()
    assert world.collect(*world.witnesses[:2]).cosigned == 2  # into the operator's directory
    settings = at_server(world, server)
    waiting = gate(world.log.path, settings)  # the server still serves the log-signed one
    assert waiting.applied == ()
    assert [f.technique for f in waiting.findings] == ["exception-not-witnessed"]

    done = server_cli(server.db_url, "ledger", "cosigned", str(world.site / "checkpoint"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("checkpoint 5: 2 new cosignatures, 2 served")
    status, body, _ = get(f"{server.url}/log/checkpoint")
    assert status == 200 and body == (world.site / "checkpoint").read_bytes()
    gated = gate(world.log.path, settings)
    assert [r.id for r in gated.applied] == [seq] and gated.findings == ()
    assert gated.witnessed == 5

    again = server_cli(server.db_url, "ledger", "cosigned", str(world.site / "checkpoint"))
    assert again.stdout.strip().endswith("0 new cosignatures, 2 served")  # no growth
    import_log(server, world.log)  # a re-import of the same size keeps the cosignatures
    assert get(f"{server.url}/log/checkpoint")[1] == body


def test_a_witness_line_the_host_does_not_pin_is_not_counted(
    server: ServerProcess, world: World
) -> None:
    seq = world.request()
    world.approve(seq)
    import_log(server, world.log)
    world.publish()
    world.collect(*world.witnesses)  # w3 cosigns too, but the host pins w1 and w2 only
    server_cli(server.db_url, "ledger", "cosigned", str(world.site / "checkpoint"))
    pinned = dataclasses.replace(at_server(world, server), witnesses=world.settings().witnesses[:2])
    assert [r.id for r in gate(world.log.path, pinned).applied] == [seq]
    one = dataclasses.replace(pinned, witnesses=(world.settings().witnesses[2],), quorum=1)
    assert [r.id for r in gate(world.log.path, one).applied] == [seq]


def refused(server: ServerProcess, path: Path, ending: str) -> None:
    done = server_cli(server.db_url, "ledger", "cosigned", str(path))
    assert done.returncode == 2, done.stdout
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and line.endswith(ending), line


def test_bad_cosigned_checkpoints_are_refused_in_one_line(
    server: ServerProcess, world: World, tmp_path: Path
) -> None:
    world.publish()
    world.collect(*world.witnesses[:2])
    cosigned = world.site / "checkpoint"
    refused(server, cosigned, "the server holds no transparency log: import the ledger first")
    import_log(server, world.log)
    bad = tmp_path / "bad"
    bad.write_bytes(cosigned.read_bytes().replace(b"\n3\n", b"\n2\n", 1))
    refused(server, bad, "does not verify")
    bad.write_bytes(b"x" * (note.MAX_NOTE + 1))
    refused(server, bad, f"is over {note.MAX_NOTE} bytes: not a checkpoint")
    world.approve(world.request())
    world.publish()  # size 5, never imported
    refused(server, cosigned, "the server holds no checkpoint of size 5: import first")
    refused(server, tmp_path / "missing", "No such file or directory")
    status, body, _ = get(f"{server.url}/log/checkpoint")
    assert status == 200 and len(note.parse(body).signatures) == 1  # nothing was stored


def test_the_server_follows_a_log_key_rotation(
    server: ServerProcess, world: World, tmp_path: Path
) -> None:
    seq = world.request()
    world.approve(seq)
    import_log(server, world.log)
    state = str(tmp_path / "verifier")
    url = f"{server.url}/log"
    assert (
        main(["ledger", "verify", "--url", url, "--vkey", world.log.vkey(), "--state", state]) == 0
    )
    settings = at_server(world, server)  # the host pins the first key
    rotate(world.log.path, world.log.owner, tmp_path / "log2.key")
    import_log(server, world.log)  # the rotation's own checkpoint: still the old key
    set_max_expiry(world.log.path, world.log.owner, 40)
    import_log(server, world.log)  # signed by the new key, announced by the entry
    new = note.parse_vkey(world.log.vkey())
    status, body, _ = get(f"{url}/checkpoint")
    assert status == 200 and note.parse(body).signatures[0].key_id == new.key_id
    assert main(["ledger", "verify", "--url", url, "--state", state]) == 0  # followed
    world.publish()
    key = new
    ws = tuple(Witness(w.signer, (*w.logs, (key.name, key)), w.state) for w in world.witnesses)
    with running(*ws[:2]) as urls:
        collect.collect(publish.load_log(world.log.path), world.site, urls)
    done = server_cli(server.db_url, "ledger", "cosigned", str(world.site / "checkpoint"))
    assert done.returncode == 0, done.stderr
    assert [r.id for r in gate(world.log.path, settings).applied] == [seq]


def test_an_import_under_a_key_never_announced_is_refused(
    server: ServerProcess, world: World, tmp_path: Path
) -> None:
    import_log(server, world.log)
    copy = tmp_path / "copy.db"
    shutil.copyfile(world.log.path, copy)
    conn = sqlite3.connect(copy)  # the ledger's log key swapped behind the entries' back
    stranger = HostKey.load_or_create(tmp_path / "stranger.key")
    with conn:
        conn.execute("DROP TRIGGER log_no_update")
        values = (stranger.public_key_bytes().hex(), str(tmp_path / "stranger.key"))
        conn.execute("UPDATE log SET public_key = ?, key_path = ?", values)
    conn.close()
    set_max_expiry(copy, world.log.owner, 40)
    vkey = publish.load_log(copy).config.verifier.vkey
    done = server_cli(server.db_url, "ledger", "import", str(copy))
    assert done.returncode == 2 and done.stderr.strip().endswith(f"{vkey}, not the server's log")
    assert note.parse(get(f"{server.url}/log/checkpoint")[1]).text.split("\n")[1] == "3"
