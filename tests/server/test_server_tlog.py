"""The fleet server serving the ledger's transparency log (server/tlog.py): a live
`patchguard server` process on SQLite and PostgreSQL, a ledger imported into it, its tiles
compared byte for byte with what `patchguard ledger publish` writes, and `patchguard ledger
verify --url` reading the server as it reads a published directory."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fleet_support import ServerProcess
from support.tlog import Log, bulk_log

from patchguard.cli import main
from patchguard.policy.transparency import publish
from patchguard.signing import HostKey


def server_cli(db_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "patchguard.cli", "server", *argv, "--db", db_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def import_log(server: ServerProcess, log: Log) -> None:
    done = server_cli(server.db_url, "ledger", "import", str(log.path))
    assert done.returncode == 0, done.stderr


def same_as_published(server: ServerProcess, view: publish.LogView, site: Path) -> int:
    """Every file `publish` wrote for `view`, fetched from the server: same bytes, and the
    headers tlog-tiles asks for. Returns how many files were compared."""
    files = publish.files(view)
    for name, data in files:
        status, body, headers = get(f"{server.url}/log/{name}")
        assert status == 200, (name, body)
        assert body == data == (site / name).read_bytes(), name
        if name == "checkpoint":
            assert headers["content-type"] == "text/plain; charset=utf-8"
            assert headers["cache-control"] == "no-cache"
        else:
            assert headers["content-type"] == "application/octet-stream"
            assert "immutable" in headers["cache-control"]
    return len(files)


@pytest.fixture
def log(tmp_path: Path) -> Log:
    """A log of 600 entries (two full tiles at level 0 and a partial one), then two appends
    through `ledger.append` (the stored tree)."""
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    made = bulk_log(tmp_path / "ledger.db", owner, tmp_path / "log.key", 600)
    made.append(30, hours=1)
    made.append(31, hours=2)
    return made


def test_the_server_serves_the_published_log_byte_for_byte(
    server: ServerProcess, log: Log, tmp_path: Path
) -> None:
    assert get(f"{server.url}/log/checkpoint")[0] == 404  # nothing imported yet
    import_log(server, log)
    site = tmp_path / "site"
    view = log.publish(site)
    assert view.size == 602
    assert same_as_published(server, view, site) == 3 + 1 + 3 + 1  # tiles, bundles, checkpoint
    state, vkey = str(tmp_path / "state"), log.vkey()
    url = f"{server.url}/log"
    assert main(["ledger", "verify", "--url", url, "--vkey", vkey, "--state", state]) == 0

    log.append(32, hours=3)  # the ledger grows; the server serves the new tree once imported
    import_log(server, log)
    grown = log.publish(site)
    same_as_published(server, grown, site)
    assert main(["ledger", "verify", "--url", url, "--state", state]) == 0  # consistent
    older = get(f"{server.url}/log/tile/0/002.p/90")  # the width a client at 602 asks for
    assert older[0] == 200
    assert older[1] == b"".join(grown.tree.complete(0, 512 + i) for i in range(90))


BAD = {
    "tile/0/abc": 400,
    "tile/a/000": 400,
    "tile/0/1": 400,  # not 3 digits
    "tile/0/x000/001": 400,  # not the one spelling of tile 1
    "tile/0/000.p/0": 400,
    "tile/0/000.p/256": 400,  # too wide: a partial tile is narrower than 256
    "tile/0/000.p/999": 400,
    "tile/0/000.p/1000": 400,
    "tile/0/000.p/-1": 400,
    "tile/0/000.p/012": 400,
    "tile/entries/000.p/abc": 400,
    "tile/0/x999/x999/x999/x999/x999/x999/999": 404,  # beyond the tree
    "tile/0/x999/x999/x999/x999/x999/x999/x999/999": 400,  # beyond any uint64
    "tile/99/000": 404,
    "tile/0/002": 404,  # the partial tile's full version does not exist yet
    "tile/0/002.p/91": 404,  # wider than the tree
    "tile/entries/003": 404,
    "tile/1/000": 404,
    "tile/": 400,
    "tile/0/000/extra": 400,
}


def test_bad_tile_paths_are_4xx_never_5xx(server: ServerProcess, log: Log) -> None:
    import_log(server, log)
    for path, status in BAD.items():
        got = get(f"{server.url}/log/{path}")
        assert got[0] == status, (path, got)
    assert get(f"{server.url}/log/tile/1/000.p/2")[0] == 200


def test_an_import_signed_by_another_log_key_is_refused(tmp_path: Path) -> None:
    # The same entries made a log twice, under two log keys: the server keeps the first.
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    (tmp_path / "a").mkdir()
    first = bulk_log(tmp_path / "a" / "ledger.db", owner, tmp_path / "a.key", 5)
    (tmp_path / "b").mkdir()
    second = bulk_log(tmp_path / "b" / "ledger.db", owner, tmp_path / "b.key", 5)
    db = f"sqlite:///{tmp_path / 'server.db'}"
    assert server_cli(db, "ledger", "import", str(first.path)).returncode == 0
    refused = server_cli(db, "ledger", "import", str(second.path))
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(f"is the log {second.vkey()}, not the server's log")
