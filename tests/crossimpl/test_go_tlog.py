"""Cross-implementation: the Go checksum database's own code (golang.org/x/mod/sumdb/note and
sumdb/tlog, Debian's golang-golang-x-mod-dev, built offline here) checks patchguard's log,
and patchguard checks a log the Go code made. Skips only if there is no `go` at all; setup
(`scripts/setup --dev`) installs it, so CI runs this."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.tlog import ORIGIN, Log, bulk_log, make_log, serve

from patchguard.cli import main
from patchguard.policy.transparency import merkle, note, publish, tiles
from patchguard.policy.transparency.checkpoint import cosign, open_checkpoint
from patchguard.policy.transparency.client import fetcher
from patchguard.policy.transparency.note import COSIGNATURE, Signer
from patchguard.signing import HostKey

GO = shutil.which("go")
GOPATH_DEBIAN = Path("/usr/share/gocode")
SOURCE = Path(__file__).with_name("tlogcheck.go")

pytestmark = pytest.mark.skipif(GO is None, reason="no Go toolchain (scripts/setup --dev)")


@pytest.fixture(scope="module")
def tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go program, written into a temporary directory and built offline in GOPATH mode
    against Debian's copy of golang.org/x/mod (a missing copy fails the build: no skip)."""
    assert GO is not None
    work = tmp_path_factory.mktemp("go")
    (work / "main.go").write_text(SOURCE.read_text())
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{work / 'gopath'}:{GOPATH_DEBIAN}",
        "GOCACHE": str(work / "cache"),
        "GOPROXY": "off",
        "GOFLAGS": "",
    }
    subprocess.run([GO, "build", "-o", "tlogcheck", "main.go"], cwd=work, env=env, check=True)
    return work / "tlogcheck"


def go(binary: Path, *args: str) -> str:
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def prove(log: Log, tmp_path: Path, name: str, *argv: str) -> Path:
    view = publish.load_log(log.path)
    text = (
        publish.prove_consistency(view, int(argv[1]))
        if argv[0] == "--consistency"
        else publish.prove_inclusion(view, int(argv[0]))
    )
    path = tmp_path / name
    path.write_text(text)
    return path


def test_go_verifies_patchguards_log(tlogcheck: Path, tmp_path: Path) -> None:
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    log = bulk_log(tmp_path / "ledger.db", owner, tmp_path / "log.key", 70_000 // 100 + 3)
    site = tmp_path / "site"
    view = log.publish(site)
    proofs = [
        prove(log, tmp_path, "inclusion-1", "1"),
        prove(log, tmp_path, "inclusion-300", "300"),
        prove(log, tmp_path, "inclusion-last", str(view.size)),
        prove(log, tmp_path, "consistency-1", "--consistency", "1"),
        prove(log, tmp_path, "consistency-256", "--consistency", "256"),
        prove(log, tmp_path, "consistency-517", "--consistency", "517"),
    ]
    out = go(tlogcheck, "verify", str(site), log.vkey(), *map(str, proofs))
    root = note.b64encode(view.latest.checkpoint.root)
    assert out == f"ok {view.latest.checkpoint.origin} 703 {root} tiles 4 proofs 6\n"


def test_go_verifies_a_small_log_and_its_growth(tlogcheck: Path, tmp_path: Path) -> None:
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    log = make_log(tmp_path / "a", owner, tmp_path / "log.key", [30, 60])
    log.publish(tmp_path / "site")
    assert go(tlogcheck, "verify", str(tmp_path / "site"), log.vkey()).startswith("ok ")
    log.append(90, hours=5)
    log.publish(tmp_path / "site")
    witness = Signer("witness.example/w1", COSIGNATURE, HostKey.generate())
    checkpoint = tmp_path / "site" / "checkpoint"
    signed = open_checkpoint(checkpoint.read_bytes(), note.parse_vkey(log.vkey()))
    checkpoint.write_bytes(
        cosign(signed, witness, 1700000000).encoded
    )  # Go ignores it, as it should
    proof = prove(log, tmp_path, "c", "--consistency", "3")
    out = go(tlogcheck, "verify", str(tmp_path / "site"), log.vkey(), str(proof))
    assert " 4 " in out and out.endswith("proofs 1\n")


def read_proof(path: Path) -> tuple[int, list[bytes]]:
    first, *hashes = path.read_text().strip().split("\n")
    return int(first.split(" ")[1]), [note.b64decode(h, "hash") for h in hashes]


def test_patchguard_verifies_a_log_go_made(
    tlogcheck: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = go(tlogcheck, "make", str(tmp_path), "300", "70000").strip()
    state = str(tmp_path / "state")
    args = ("ledger", "verify", "--tree-only", "--state", state)
    with serve(tmp_path) as url:
        assert main([*args, "--url", f"{url}/old", "--vkey", vkey]) == 0
        assert main([*args, "--url", f"{url}/new"]) == 0
    out = capsys.readouterr().out
    assert "go.sum database tree size 70000" in out and "consistent with size 300" in out
    fetch = fetcher(str(tmp_path / "new"))
    size = 70_000
    source = tiles.TileSource(fetch, size)
    entries = [e for b in tiles.bundles_for(size) for e in source.entries(b.index)]
    tree = merkle.MemoryTree([merkle.leaf_hash(e) for e in entries])
    old, proof = read_proof(tmp_path / "consistency")
    merkle.verify_consistency(old, size, tree.root(old), tree.root(), proof)
    assert proof == tree.consistency_proof(old)
    index, proof = read_proof(tmp_path / "inclusion")
    merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, size, proof, tree.root())
    assert proof == tree.inclusion_proof(index)


def test_go_verifies_the_log_the_fleet_server_serves(tlogcheck: Path, tmp_path: Path) -> None:
    # The same Go checks, reading every tile and the checkpoint over HTTP from a live
    # `patchguard server` that imported the ledger (server/tlog.py).
    from server.fleet_support import ServerProcess

    owner = HostKey.load_or_create(tmp_path / "owner.key")
    log = bulk_log(tmp_path / "ledger.db", owner, tmp_path / "log.key", 70_000 // 100 + 3)
    log.append(30, hours=1)
    server = ServerProcess(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    try:
        argv = [sys.executable, "-m", "patchguard.cli", "server", "ledger", "import"]
        done = subprocess.run(
            [*argv, str(log.path), "--db", server.db_url], capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        out = go(tlogcheck, "verify", f"{server.url}/log", log.vkey())
    finally:
        server.stop()
    root = note.b64encode(publish.load_log(log.path).latest.checkpoint.root)
    assert out == f"ok {ORIGIN} 704 {root} tiles 4 proofs 0\n"
