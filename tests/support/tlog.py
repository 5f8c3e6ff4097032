"""Helpers for the transparency log tests: ledgers that are logs, forks of them, and a real
HTTP server on 127.0.0.1 serving a published directory."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from patchguard.policy import ledger
from patchguard.policy.chain import seal
from patchguard.policy.exceptions import init_ledger, set_max_expiry
from patchguard.policy.transparency import publish
from patchguard.signing import HostKey

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ORIGIN = "ledger.example.org/exceptions"


@dataclass(frozen=True)
class Log:
    path: Path
    owner: HostKey
    log_key: Path

    def vkey(self) -> str:
        return publish.load_log(self.path).config.verifier.vkey

    def append(self, days: int, hours: int = 1) -> None:
        set_max_expiry(self.path, self.owner, days, now=T0 + timedelta(hours=hours))

    def publish(self, directory: Path) -> publish.LogView:
        view = publish.load_log(self.path)
        publish.publish(view, directory)
        return view


def make_log(directory: Path, owner: HostKey, log_key: Path, days: list[int]) -> Log:
    """A ledger made a log at entry 1, then one max-expiry entry per item of `days`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ledger.db"
    init_ledger(path, owner, "Host Owner", now=T0)
    publish.init_log(path, ORIGIN, log_key)
    log = Log(path, owner, log_key)
    for hour, value in enumerate(days, 1):
        log.append(value, hours=hour)
    return log


def bulk_log(path: Path, owner: HostKey, log_key: Path, count: int) -> Log:
    """A log of `count` entries, 2.. written in one transaction (appending one by one replays
    the whole ledger each time): entry 1 grants the owner, the rest set max-expiry."""
    init_ledger(path, owner, "Host Owner", now=T0)
    previous = ledger.load(path).entries[0].hash
    with ledger.locked(path) as (conn, _):
        for seq in range(2, count + 1):
            payload = {"policy": "max_expiry_days", "days": 1 + seq % 300}
            entry = seal(seq, T0 + timedelta(seconds=seq), "policy", owner, None, payload, previous)
            ledger._insert(conn, entry)  # the row append() would store
            previous = entry.hash
    publish.init_log(path, ORIGIN, log_key)
    return Log(path, owner, log_key)


@contextmanager
def serve(
    directory: Path, handler: type[http.server.BaseHTTPRequestHandler] | None = None
) -> Iterator[str]:
    """http://127.0.0.1:PORT serving `directory` (or `handler`), stopped on exit."""
    factory: Callable[..., http.server.BaseHTTPRequestHandler] = handler or functools.partial(
        _Quiet, directory=str(directory)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
