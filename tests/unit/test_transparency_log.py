"""The ledger as a transparency log, end to end through the CLI: checkpoints signed with each
append, old ledgers untouched, publish in the tlog-tiles layout, proofs, and `verify --url`
and `watch` against a real HTTP server on 127.0.0.1, honest, rewritten and hostile."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from support.tlog import ORIGIN, Log, bulk_log, make_log, serve

from patchguard.cli import main
from patchguard.policy import ledger
from patchguard.policy.exceptions import init_ledger, set_max_expiry
from patchguard.policy.transparency import TransparencyError, client, merkle, note, publish, store
from patchguard.policy.transparency.checkpoint import open_checkpoint
from patchguard.signing import HostKey


@pytest.fixture
def owner(tmp_path: Path) -> HostKey:
    return HostKey.load_or_create(tmp_path / "keys" / "owner.key")


@pytest.fixture
def log(tmp_path: Path, owner: HostKey) -> Log:
    return make_log(tmp_path / "a", owner, tmp_path / "keys" / "log.key", [30, 60, 90])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def checkpoints(path: Path) -> list[tuple[int, bytes]]:
    conn = sqlite3.connect(path)
    try:
        return store.checkpoint_notes(conn)
    finally:
        conn.close()


def test_every_append_signs_a_checkpoint_of_the_whole_tree(log: Log) -> None:
    stored = checkpoints(log.path)
    assert [size for size, _ in stored] == [1, 2, 3, 4]
    entries = ledger.load(log.path).entries
    verifier = note.parse_vkey(log.vkey())
    for size, signed in stored:
        checkpoint = open_checkpoint(signed, verifier).checkpoint
        assert checkpoint.origin == ORIGIN and checkpoint.size == size
        assert checkpoint.root == store.tree_of(entries[:size]).root()


def test_a_ledger_without_a_log_works_as_before(tmp_path: Path, owner: HostKey) -> None:
    path = tmp_path / "plain.db"
    init_ledger(path, owner, "Host Owner")
    set_max_expiry(path, owner, 30)
    assert ledger.verify(path).ok and checkpoints(path) == []
    with pytest.raises(ledger.LedgerError, match="not a transparency log yet"):
        publish.load_log(path)


def test_an_append_whose_checkpoint_cannot_be_signed_is_not_made(log: Log) -> None:
    os.rename(log.log_key, f"{log.log_key}.away")
    with pytest.raises(ledger.LedgerError, match=r"nothing appended.*log\.key"):
        log.append(7, hours=9)
    assert len(ledger.load(log.path).entries) == 4 and len(checkpoints(log.path)) == 4
    other = HostKey.load_or_create(log.log_key)  # another key in its place: refused too
    assert other.public_key_bytes() != note.parse_vkey(log.vkey()).public_key
    with pytest.raises(ledger.LedgerError, match="not the log's key"):
        log.append(7, hours=9)


def test_checkpoints_are_append_only(log: Log) -> None:
    conn = sqlite3.connect(log.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM checkpoints")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE log SET origin = 'x'")
    conn.close()


def test_vkey_publish_and_prove(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ledger", "vkey", "--ledger", str(log.path))
    vkey = out.strip()
    assert code == 0 and vkey.startswith(ORIGIN + "+")
    site = tmp_path / "site"
    code, out, _ = run(capsys, "ledger", "publish", str(site), "--ledger", str(log.path))
    assert code == 0 and "3 files written" in out
    found = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert found == ["checkpoint", "tile/0/000.p/4", "tile/entries/000.p/4"]
    code, out, _ = run(capsys, "ledger", "publish", str(site), "--ledger", str(log.path))
    assert "0 files written, 3 unchanged" in out
    signed = open_checkpoint((site / "checkpoint").read_bytes(), note.parse_vkey(vkey))
    entries = ledger.load(log.path).entries
    code, out, _ = run(capsys, "ledger", "prove", "3", "--ledger", str(log.path))
    head, _, rest = out.partition("\n\n")
    first, *hashes = head.split("\n")
    assert first == "index 2" and rest.encode() == signed.encoded
    leaf = merkle.leaf_hash(store.leaf_bytes(entries[2]))
    proof = [note.b64decode(h, "hash") for h in hashes]
    merkle.verify_inclusion(leaf, 2, 4, proof, signed.checkpoint.root)
    code, out, _ = run(capsys, "ledger", "prove", "--consistency", "2", "--ledger", str(log.path))
    first, *hashes = out.partition("\n\n")[0].split("\n")
    assert first == "old 2"
    old_root = store.tree_of(entries[:2]).root()
    proof = [note.b64decode(h, "hash") for h in hashes]
    merkle.verify_consistency(2, 4, old_root, signed.checkpoint.root, proof)
    code, _, err = run(capsys, "ledger", "prove", "9", "--ledger", str(log.path))
    assert code == 2 and "no entry 9" in err


def test_publish_refuses_to_show_a_second_history(
    log: Log, tmp_path: Path, owner: HostKey, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    log.publish(site)
    fork = make_log(tmp_path / "b", owner, log.log_key, [30, 61, 90])
    code, _, err = run(capsys, "ledger", "publish", str(site), "--ledger", str(fork.path))
    assert code == 2 and "which these entries do not extend" in err
    stranger = make_log(tmp_path / "c", owner, tmp_path / "other.key", [30])
    code, _, err = run(capsys, "ledger", "publish", str(site), "--ledger", str(stranger.path))
    assert code == 2 and "not this log's" in err
    big = bulk_log(tmp_path / "big.db", owner, tmp_path / "big.key", 300)
    big_site = tmp_path / "big-site"
    big.publish(big_site)
    (big_site / "checkpoint").unlink()
    full = big_site / "tile/0/000"
    full.write_bytes(bytes(8192))
    code, _, err = run(capsys, "ledger", "publish", str(big_site), "--ledger", str(big.path))
    assert code == 2 and "full tile already published with other bytes" in err


def test_verify_over_http_remembers_and_then_proves_consistency(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, state = tmp_path / "site", str(tmp_path / "state")
    log.publish(site)
    with serve(site) as url:
        code, _, err = run(capsys, "ledger", "verify", "--url", url, "--state", state)
        assert code == 2 and "give its key with --vkey" in err
        args = ("ledger", "verify", "--url", url, "--state", state)
        code, out, _ = run(capsys, *args, "--vkey", log.vkey())
        assert code == 0 and "size 4" in out and "first contact" in out
        log.append(120, hours=5)
        log.publish(site)
        code, out, _ = run(capsys, *args)  # the key is pinned in the state now
        assert code == 0 and "size 5" in out and "consistent with size 4 seen before" in out


def test_a_big_log_verifies_from_tiles(
    tmp_path: Path, owner: HostKey, capsys: pytest.CaptureFixture[str]
) -> None:
    big = bulk_log(tmp_path / "big.db", owner, tmp_path / "log.key", 70_000 // 100)
    site = tmp_path / "site"
    view = big.publish(site)
    assert view.size == 700 and (site / "tile/0/001").stat().st_size == 8192
    assert (site / "tile/0/002.p/188").exists() and (site / "tile/1/000.p/2").exists()
    args = ("ledger", "verify", "--url", str(site), "--state", str(tmp_path / "st"))
    code, _, err = run(capsys, *args, "--vkey", big.vkey())
    assert code == 0, err


def test_a_rewritten_history_is_a_split_view_with_both_checkpoints(
    log: Log, tmp_path: Path, owner: HostKey, capsys: pytest.CaptureFixture[str]
) -> None:
    site, state = tmp_path / "site", str(tmp_path / "state")
    log.publish(site)
    args = ("ledger", "verify", "--url", str(site), "--state", state)
    assert run(capsys, *args, "--vkey", log.vkey())[0] == 0
    before = (site / "checkpoint").read_text()
    fork = make_log(tmp_path / "b", owner, log.log_key, [30, 61, 90, 120])  # same key, entry 3
    shutil.rmtree(site)
    fork.publish(site)
    code, _, err = run(capsys, *args)
    assert code == 1 and "split view" in err
    assert "checkpoint seen before:\n" in err and "checkpoint now:\n" in err
    assert all(line in err for line in before.strip().split("\n") if line)
    shutil.rmtree(site)  # the old, shorter log served again: it went back
    make_log(tmp_path / "c", owner, log.log_key, [30]).publish(site)
    code, _, err = run(capsys, *args)
    assert code == 1 and "went back from size 4 to 2" in err


def test_tampered_tiles_and_entries_do_not_verify(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    log.publish(site)
    bundle = site / "tile/entries/000.p/4"
    data = bundle.read_bytes()
    bundle.write_bytes(data.replace(b'\\"days\\":60', b'\\"days\\":66'))
    args = ("ledger", "verify", "--url", str(site), "--vkey", log.vkey())
    code, _, err = run(capsys, *args, "--state", str(tmp_path / "s1"))
    assert code == 1 and "do not give the root" in err
    bundle.write_bytes(data)
    tile = site / "tile/0/000.p/4"
    tile.write_bytes(bytes(32) + tile.read_bytes()[32:])
    code, _, err = run(capsys, *args, "--state", str(tmp_path / "s2"))
    assert code == 1 and "tile/0/000.p/4 does not match the entries" in err


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("checkpoint", b"truncated\n", "no blank line"),
        ("checkpoint", b"\xff\xfe\n\n", "not UTF-8"),
        ("checkpoint", b"x" * 70_000, "more than the 65536 bytes"),
        ("checkpoint", b"", "no blank line|newline"),
        ("tile/0/000.p/4", b"\x00" * 100, "100 bytes, not 128"),
        ("tile/entries/000.p/4", b"\x00\x10abc", "cut short"),
        ("tile/entries/000.p/4", None, "cannot read"),
    ],
)
def test_malformed_input_is_one_line_and_exit_2(
    log: Log,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes | None,
    why: str,
) -> None:
    site = tmp_path / "site"
    log.publish(site)
    if content is None:
        (site / name).unlink()
    else:
        (site / name).write_bytes(content)
    args = ("ledger", "verify", "--url", str(site), "--vkey", log.vkey())
    code, out, err = run(capsys, *args, "--state", str(tmp_path / "s"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("patchguard: ")

    assert re.search(why, err), err


class _Endless(http.server.BaseHTTPRequestHandler):
    """A hostile server: every answer is an endless stream, with no length given."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\xe2\x80\x94 " * 4096)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Liar(_Endless):
    """Claims a length far over any limit."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()


class _Short(_Endless):
    """Promises 100 bytes, sends 10 and hangs up."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"0123456789")


def test_a_server_that_hangs_up_early_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = "ledger.example.org/exceptions+00000000+" + note.b64encode(b"\x01" + bytes(32))
    with serve(tmp_path, _Short) as url:
        args = ("ledger", "verify", "--url", url, "--vkey", vkey, "--state", str(tmp_path))
        code, _, err = run(capsys, *args)
    assert code == 2 and "cut short at 10 of 100 bytes" in err and err.count("\n") == 1


def test_a_hostile_server_cannot_make_verify_read_without_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = "ledger.example.org/exceptions+00000000+" + note.b64encode(b"\x01" + bytes(32))
    for handler in (_Endless, _Liar):
        with serve(tmp_path, handler) as url:
            args = ("ledger", "verify", "--url", url, "--vkey", vkey, "--state", str(tmp_path))
            code, _, err = run(capsys, *args)
            assert code == 2 and "65536" in err and err.count("\n") == 1


def test_a_verify_reads_no_more_than_its_budget(log: Log, tmp_path: Path) -> None:
    site = tmp_path / "site"
    log.publish(site)
    with pytest.raises(TransparencyError, match="over the 1000 bytes one verify may read"):
        client.check(str(site), log.vkey(), tmp_path / "s", budget=1000)
    assert client.check(str(site), log.vkey(), tmp_path / "s", budget=100_000).signed


def test_watch_prints_each_new_entry_once(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    log.publish(site)
    with serve(site) as url:
        args = ("ledger", "watch", "--url", url, "--state", str(tmp_path / "st"), "--once")
        code, out, _ = run(capsys, *args, "--vkey", log.vkey())
        lines = out.strip().split("\n")
        assert code == 0 and len(lines) == 4 and lines[2].split("\t")[:3][0] == "3"
        code, out, _ = run(capsys, *args)
        assert code == 0 and out == ""
        log.append(45, hours=7)
        log.publish(site)
        bundle = site / "tile/entries/000.p/5"
        honest = bundle.read_bytes()
        bundle.write_bytes(honest.replace(b'\\"days\\":45', b'\\"days\\":46'))
        code, out, err = run(capsys, *args)  # a forged new entry: nothing shown, nothing skipped
        assert code == 1 and out == "" and "entry 5: entry 4 is not in the tree" in err
        bundle.write_bytes(honest)
        code, out, _ = run(capsys, *args)
        assert out.count("\n") == 1 and out.startswith("5\t") and '"days":45' in out
