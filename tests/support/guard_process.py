"""A `patchguard guard` process for the live tests: its JSON lines read as they come, its
stderr kept, and a stop that measures how long the guard took to answer SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class Guard:
    def __init__(
        self, config: Path, python: str = sys.executable, env: dict[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [python, "-m", "patchguard.cli", "guard", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
        )
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self.stderr: list[str] = []
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self._done.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float) -> Event | None:
        deadline = time.monotonic() + timeout
        for event in self.seen:
            if predicate(event):
                return event
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(event)
            if predicate(event):
                return event
        return None

    def event(self, name: str, timeout: float = 60) -> Event:
        found = self.wait_event(lambda e: e.get("event") == name, timeout)
        assert found is not None, f"no {name} event:\n" + "".join(self.stderr)
        return found

    def all_lines(self) -> list[Event]:
        """Every line, once the guard has exited."""
        self._done.wait(10)
        self.wait_event(lambda e: False, 0.1)
        return self.seen

    def terminate(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send `sig`; (exit code, seconds it took to exit). A guard that does not exit in 15 s
        is sent SIGABRT, for faulthandler's dump of every thread in the failure."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait()
            time.sleep(0.5)
            raise AssertionError("no exit within 15 s:\n" + "".join(self.stderr)) from None
        return code, time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def signals_blocked(pid: int) -> bool:
    """Whether a thread of the process has SIGTERM blocked: the guard's supervisor has set its
    mask and started its worker, which keeps it. The main thread's own mask does not say so:
    sigtimedwait(2) unblocks the signals it waits for while it waits, almost all the time."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    return any(_blocks_sigterm(task / "status") for task in tasks)


def _blocks_sigterm(status_path: Path) -> bool:
    try:
        status = status_path.read_text()
    except OSError:
        return False  # the thread ended between the listing and the read
    line = next(x for x in status.splitlines() if x.startswith("SigBlk:"))
    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def write_config(tmp: Path, body: str = "", webhook: str | None = None) -> Path:
    """A guard config whose every path is under `tmp` (never /var/lib)."""
    config = tmp / "guard.toml"
    text = (
        f'[guard]\nspool = "{tmp / "spool"}"\nkey = "{tmp / "host.key"}"\n'
        f'state = "{tmp / "state"}"\ntrigger_interval = 0.2\n' + body
    )
    if webhook is not None:
        text += f'[alert]\nwebhook = "{webhook}"\n'
    config.write_text(text)
    return config
