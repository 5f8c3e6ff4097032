"""Where the guard's events go: JSON lines on stdout (journald keeps them), syslog, and a
webhook whose alerts are spooled on disk first, so none is lost while the endpoint is down and
they arrive in order, once, when it is back."""

from __future__ import annotations

import contextlib
import json
import syslog
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from patchguard.atomic import write_atomic

Event = Mapping[str, Any]
SYSLOG_PRIORITY = {
    "info": syslog.LOG_INFO,
    "low": syslog.LOG_NOTICE,
    "medium": syslog.LOG_WARNING,
    "high": syslog.LOG_ERR,
    "critical": syslog.LOG_CRIT,
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class LogSink:
    """One JSON object per line (schema: docs/guard.md)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, event: Event) -> None:
        line = json.dumps({"ts": now_iso(), **event}, sort_keys=True)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


class SyslogSink:
    def __init__(self) -> None:
        syslog.openlog("patchguard", syslog.LOG_PID, syslog.LOG_DAEMON)

    def send(self, event: Event) -> None:
        finding = event.get("finding") or {}
        priority = SYSLOG_PRIORITY.get(finding.get("severity", "info"), syslog.LOG_INFO)
        text = event.get("message") or f"{finding.get('subject')}: {finding.get('summary')}"
        syslog.syslog(priority, f"{event.get('event')}: {text}")


class Spool:
    """Alerts as numbered files in a directory: written atomically, delivered in order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        names = [p.name for p in directory.glob("*.json")]
        self._next = max((int(n.split(".")[0]) for n in names), default=0) + 1

    def put(self, event: Event, durable: bool = True) -> Path:
        """`durable=False`: not waiting for the disk (atomic.write_atomic); sync it after."""
        with self._lock:
            seq, self._next = self._next, self._next + 1
        path = self.directory / f"{seq:012d}.json"
        write_atomic(path, json.dumps(event, sort_keys=True).encode(), 0o600, durable)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.json"))


def post_json(url: str, body: bytes, timeout: float = 5.0) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(url, response.status, "not 2xx", response.headers, None)


class WebhookSink:
    """Spools each alert, and a delivery thread posts the spool in order with backoff."""

    def __init__(
        self, url: str, spool: Spool, post: Callable[[str, bytes], None] = post_json
    ) -> None:
        self.url, self.spool, self._post = url, spool, post
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._deliver, name="webhook", daemon=True)
        self._thread.start()

    def send(self, event: Event) -> None:
        self.spool.put({"ts": now_iso(), **event})
        self._wake.set()

    def _deliver(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            for path in self.spool.pending():
                try:
                    self._post(self.url, path.read_bytes())
                except (OSError, urllib.error.URLError, ValueError):
                    break  # the endpoint is down: keep this one and everything after it
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                backoff = 1.0
            else:
                self._wake.wait(timeout=5.0)  # nothing pending: sleep until the next alert
                self._wake.clear()
                continue
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)

    def close(self, timeout: float = 5.0) -> None:
        """Stop delivering; a post under way is left to its thread (what it carries stays in
        the spool and goes at the next start), so a stop never waits on the endpoint."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)


AlertSink = LogSink | SyslogSink | WebhookSink


class Outlets:
    """The log and the alert sinks of one config: events about the guard itself go to all."""

    def __init__(self, out: IO[str], webhook: str | None, syslog_on: bool, spool: Path) -> None:
        self.log = LogSink(out)
        self.alerts: list[AlertSink] = []
        self.open(webhook, syslog_on, spool)

    def open(self, webhook: str | None, syslog_on: bool, spool: Path) -> None:
        self.alerts = []
        if webhook:
            self.alerts.append(WebhookSink(webhook, Spool(spool)))
        if syslog_on:
            self.alerts.append(SyslogSink())

    def announce(self, event: Event) -> None:
        self.log.send(event)
        for sink in self.alerts:
            sink.send(event)

    def close(self, timeout: float = 5.0) -> None:
        """Each webhook thread gets its share of `timeout`."""
        hooks = [s for s in self.alerts if isinstance(s, WebhookSink)]
        for sink in hooks:
            sink.close(timeout / max(1, len(hooks)))
