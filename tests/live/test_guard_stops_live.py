"""The guard answers SIGTERM within 2 s whatever it is doing (starting, sweeping, replaying a
long ledger, waiting on a lock another process holds, posting to a webhook that never
answers, draining its spool), and says so to its sinks; a lock held by another process is a
finding and never starves the watchdog; a stop nobody asked for is announced as such, and
again at the next start, as is a run that ended without a stop (SIGKILL)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.guard_process import Guard, signals_blocked, write_config
from support.receiver import Receiver

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
GUARD_CLI = (sys.executable, "-m", "patchguard.cli", "guard")
STOP_BOUND = 2.0  # seconds from SIGTERM to exit, in every phase (the guard's promise)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@contextlib.contextmanager
def ledger_locked(ledger: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the ledger's SQLite lock (BEGIN EXCLUSIVE) until the end."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(ledger)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.kill()
        child.wait()


def make_ledger(tmp: Path, entries: int = 0) -> Path:
    """A ledger: made through the CLI's code (2 entries), or synthetic with `entries`."""
    ledger = tmp / "ledger.db"
    if not entries:
        from patchguard.policy import exceptions as ops
        from patchguard.signing import HostKey

        owner = HostKey.load_or_create(tmp / "owner.key")
        ops.init_ledger(ledger, owner, "SRE team")
        ops.set_max_expiry(ledger, owner, 90)
        return ledger
    from support.synthetic_ledger import build

    from patchguard.policy.chain import COLUMNS
    from patchguard.policy.ledger import _SCHEMA

    rows = build(tmp / "keys", entries).rows()
    with contextlib.closing(sqlite3.connect(ledger, isolation_level=None)) as conn:
        for statement in _SCHEMA:
            conn.execute(statement)
        marks = ", ".join("?" for _ in COLUMNS)
        conn.executemany(f"INSERT INTO entries ({', '.join(COLUMNS)}) VALUES ({marks})", rows)
    return ledger


def assert_prompt_stop(g: Guard, phase_hint: str) -> dict[str, Any]:
    code, took = g.terminate()
    assert code == 0, "".join(g.stderr)
    assert took < STOP_BOUND, f"SIGTERM in {phase_hint} answered after {took:.2f} s"
    stop = g.wait_event(lambda e: e.get("event") == "stop", 5)
    assert stop is not None, "no stop event:\n" + "".join(g.stderr)
    return stop


def test_sigterm_while_starting(tmp_path: Path) -> None:
    g = Guard(write_config(tmp_path, 'baseline = ""\nledger = ""\nsweep_mean = 600\n'))
    try:
        deadline = time.monotonic() + 30
        while not signals_blocked(g.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        stop = assert_prompt_stop(g, "start")
    finally:
        g.kill()
    assert stop["requested"] is False and stop["by"]["pid"] == os.getpid()
    assert stop["phase"] in ("start", "ledger replay") or stop["phase"].startswith("sweep")


def test_sigterm_during_the_first_sweep(tmp_path: Path) -> None:
    g = Guard(write_config(tmp_path, 'baseline = ""\nledger = ""\nsweep_mean = 600\n'))
    try:
        g.event("start")  # the first sweep follows at once
        stop = assert_prompt_stop(g, "sweep")
    finally:
        g.kill()
    assert stop["phase"] != "wait", stop
    assert not any(e.get("event") == "sweep" for e in g.all_lines()), "the sweep was finished"


def test_sigterm_during_a_long_ledger_replay(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, entries=4000)
    body = f'baseline = ""\nledger = "{ledger}"\nsweep_mean = 600\n'
    g = Guard(write_config(tmp_path, body))
    try:
        g.event("start")
        time.sleep(0.3)  # into the replay of 4000 signed entries (seconds of work)
        stop = assert_prompt_stop(g, "ledger replay")
    finally:
        g.kill()
    assert stop["phase"] == "ledger replay", stop


def test_a_ledger_locked_by_another_process(tmp_path: Path, receiver: Receiver) -> None:
    """The lock is a finding on every sink; the watchdog is pinged all along; SIGTERM while
    the lock is held is answered in time."""
    ledger = make_ledger(tmp_path)
    sock_path = str(tmp_path / "notify.sock")
    body = f'baseline = ""\nledger = "{ledger}"\nsweep_mean = 600\n'
    with (
        ledger_locked(ledger),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        sock.bind(sock_path)
        env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "4000000"}  # pinged every 2 s
        g = Guard(write_config(tmp_path, body, receiver.url), env=env)
        try:
            locked = receiver.wait_for(
                lambda b: (b.get("finding") or {}).get("technique") == "ledger-locked", 60
            )
            assert locked is not None, "".join(g.stderr)
            assert locked["finding"]["severity"] == "high"
            notes = _drain(sock)
            stop = assert_prompt_stop(g, "locked ledger")
        finally:
            g.kill()
    assert "WATCHDOG=1" in notes
    assert not any(e.get("event") == "stalled" for e in g.all_lines())
    assert stop["requested"] is False


def _drain(sock: socket.socket) -> list[str]:
    sock.settimeout(3)
    got: list[str] = []
    with contextlib.suppress(TimeoutError):
        while len(got) < 20:
            got.append(sock.recv(256).decode())
            sock.settimeout(0.2)
    return got


@contextlib.contextmanager
def silent_webhook() -> Iterator[str]:
    """A TCP endpoint that accepts and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/alert"
    finally:
        stop.set()
        for conn in held:
            conn.close()
        server.close()


def spooled(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "spool").glob("*.json"))]


def test_sigterm_while_the_webhook_never_answers(tmp_path: Path) -> None:
    with silent_webhook() as url:
        g = Guard(write_config(tmp_path, 'baseline = ""\nledger = ""\nsweep_mean = 600\n', url))
        try:
            g.event("sweep")  # the start event has been posted, and hangs
            stop = assert_prompt_stop(g, "webhook delivery")
        finally:
            g.kill()
    assert stop["requested"] is False
    assert any(e.get("event") == "stop" for e in spooled(tmp_path)), "the stop is not spooled"


class SlowReceiver:
    """A webhook that answers each POST after a pause: the spool drains slowly."""

    def __init__(self, pause: float) -> None:
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(pause)
                outer.count += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_sigterm_while_the_spool_drains(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for n in range(1, 401):  # alerts left from a run while the endpoint was down
        (spool / f"{n:012d}.json").write_text(json.dumps({"event": "old", "n": n}))
    slow = SlowReceiver(0.05)
    try:
        body = 'baseline = ""\nledger = ""\nsweep_mean = 600\n'
        g = Guard(write_config(tmp_path, body, slow.url))
        try:
            g.event("start")
            deadline = time.monotonic() + 30
            while slow.count < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert slow.count >= 5, "the spool is not draining"
            stop = assert_prompt_stop(g, "spool drain")
        finally:
            g.kill()
    finally:
        slow.close()
    left = spooled(tmp_path)
    assert any(e.get("event") == "old" for e in left), "the drain was over before the stop"
    assert stop["requested"] is False
    assert any(e.get("event") == "stop" for e in left)  # waits for the next run


# --- stops asked for, and not ---------------------------------------------------------------


def _run_until_swept(config: Path) -> Guard:
    g = Guard(config)
    g.event("sweep")
    return g


def test_a_stop_nobody_asked_for_is_announced_then_and_at_the_next_start(
    tmp_path: Path, receiver: Receiver
) -> None:
    from patchguard.signing import HostKey

    HostKey.load_or_create(tmp_path / "host.key")  # the guard signs its state with it
    config = write_config(tmp_path, 'baseline = ""\nledger = ""\nsweep_mean = 600\n', receiver.url)
    g = _run_until_swept(config)
    stop = assert_prompt_stop(g, "wait")
    assert stop["requested"] is False and stop["by"]["pid"] == os.getpid()
    assert "not asked for through systemctl stop" in stop["message"]
    assert receiver.wait_for(lambda b: b.get("event") == "stop", 10) is not None

    g = _run_until_swept(config)
    try:
        said = g.wait_event(lambda e: e.get("event") == "last-stop-unrequested", 5)
        assert said is not None and said["stop"]["by"]["pid"] == os.getpid()
        assert receiver.wait_for(lambda b: b.get("event") == "last-stop-unrequested", 10)
        # asked for, as the unit's ExecStop asks before systemd's SIGTERM
        asked = subprocess.run(
            [
                sys.executable,
                "-m",
                "patchguard.cli",
                "guard",
                "--config",
                str(config),
                "--stop-requested",
                str(g.proc.pid),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert asked.returncode == 0, asked.stderr
        stop = assert_prompt_stop(g, "wait")
    finally:
        g.kill()
    assert stop["requested"] is True and "message" not in stop

    g = _run_until_swept(config)
    try:
        assert_prompt_stop(g, "wait")
    finally:
        g.kill()
    names = {e.get("event") for e in g.all_lines()}
    assert "last-stop-unrequested" not in names and "last-run-unstopped" not in names


def test_a_run_killed_with_sigkill_is_announced_at_the_next_start(
    tmp_path: Path, receiver: Receiver
) -> None:
    from patchguard.signing import HostKey

    HostKey.load_or_create(tmp_path / "host.key")
    config = write_config(tmp_path, 'baseline = ""\nledger = ""\nsweep_mean = 600\n', receiver.url)
    g = _run_until_swept(config)
    killed_pid = g.proc.pid
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait()
    g = _run_until_swept(config)
    try:
        said = g.wait_event(lambda e: e.get("event") == "last-run-unstopped", 5)
        assert said is not None and said["pid"] == killed_pid and said["rebooted"] is False
        posted = receiver.wait_for(lambda b: b.get("event") == "last-run-unstopped", 10)
        assert posted is not None and "SIGKILL" in posted["message"]
    finally:
        assert_prompt_stop(g, "wait")
        g.kill()
