"""The guard's main thread: it only takes signals, pings the watchdog and stops the guard.

The guard's work (start-up, sweeps, trigger looks, ledger replays) runs in a worker thread, so
no lock, replay or I/O wait in it can hold back a SIGTERM or the watchdog. SIGTERM, SIGINT and
SIGHUP are blocked in every thread and taken here with sigtimedwait(2), which also says who
sent them: a stop is announced with its sender, and with whether it was asked for through the
unit's ExecStop (stops.py). The watchdog is pinged only while the worker makes progress: a
worker stuck longer than the watchdog allows is said to every sink, then left to systemd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from patchguard.guard import stops
from patchguard.guard.config import GuardConfig
from patchguard.guard.kernel_events import Waiter
from patchguard.guard.sinks import Outlets
from patchguard.guard.systemd import Watchdog, notify
from patchguard.text import visible

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# From SIGTERM to exit, STOP_BUDGET in all, under the 2 s promised: the worker gets up to
# WORKER_GRACE to leave its loop, the webhook threads SINK_GRACE at the end, and the fleet
# link what is left between (what it cannot send in time waits in its spool for the next run).
STOP_BUDGET = 1.7
WORKER_GRACE = 0.6
SINK_GRACE = 0.2
TICK = 0.2  # how often the main thread looks at the worker
STALL_DEFAULT = 30.0  # seconds without progress that count as stuck, without a watchdog


@dataclass
class Progress:
    """What the worker is doing and when it last moved (read by the main thread)."""

    phase: str = "start"
    at: float = 0.0

    def mark(self, phase: str) -> None:
        self.phase, self.at = phase, time.monotonic()


class Supervisor:
    def __init__(self, config: GuardConfig, config_path: Path | None, out: IO[str]) -> None:
        # Blocked before any thread exists: every thread made later inherits the mask, so
        # these signals reach only sigtimedwait below, which tells who sent them.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self.config, self.config_path, self.out = config, config_path, out
        self.stop, self.reload = threading.Event(), threading.Event()
        self.waiter = Waiter()
        self.progress = Progress(at=time.monotonic())
        self.outlets = Outlets(out, config.webhook, config.syslog, config.spool)
        self.guard: Any = None  # the Guard, once the worker made it
        self.failure: str | None = None
        self.watchdog = Watchdog()
        self._stall_said = False

    def run(self) -> int:
        from patchguard.guard.daemon import Guard

        def work() -> None:
            try:
                self.guard = Guard(self.config, self.config_path, self.outlets, self)
                self.guard.run()
            except Exception as exc:  # said to every sink below; systemd restarts the guard
                self.failure = f"{type(exc).__name__}: {exc}"

        worker = threading.Thread(target=work, name="guard-work", daemon=True)
        worker.start()
        sent = self._wait(worker)
        return self._finish(worker, sent)

    def _wait(self, worker: threading.Thread) -> stops.Sender | None:
        """Signals and the watchdog until a stop (its sender) or the worker's end (None)."""
        while worker.is_alive():
            info = signal.sigtimedwait(SIGNALS, TICK)
            if info is not None and info.si_signo == signal.SIGHUP:
                self.reload.set()
                self.waiter.wake()
            elif info is not None:
                self.stop.set()
                self.waiter.wake()
                return stops.sender_of(info)
            self._tend_watchdog()
        return None

    def _tend_watchdog(self) -> None:
        stalled = time.monotonic() - self.progress.at
        if stalled < self._stall_limit():
            self._stall_said = False
            self.watchdog.ping()
            return
        if not self._stall_said:  # said once; the watchdog then ends it and systemd restarts
            self._stall_said = True
            self.outlets.announce(
                {
                    "event": "stalled",
                    "phase": self.progress.phase,
                    "seconds": round(stalled, 1),
                    "message": f"the guard made no progress for {stalled:.0f} s in "
                    f"{self.progress.phase}; the watchdog is no longer pinged",
                }
            )

    def _stall_limit(self) -> float:
        interval = self.watchdog.interval
        return 2 * interval if interval is not None else STALL_DEFAULT

    def _finish(self, worker: threading.Thread, sent: stops.Sender | None) -> int:
        notify("STOPPING=1")
        deadline = time.monotonic() + STOP_BUDGET
        worker.join(WORKER_GRACE)
        if sent is None and self.failure is None:
            self.failure = "the guard's work ended without a stop"
        event = self._stop_event(sent, worker.is_alive())
        self.outlets.announce(event)
        self._close(event, deadline)
        code = 0 if self.failure is None else 1
        if worker.is_alive():  # stuck in a wait it cannot leave: the kernel closes its fds
            with contextlib.suppress(Exception):
                self.out.flush()
                sys.stderr.flush()
            os._exit(code)
        return code

    def _stop_event(self, sent: stops.Sender | None, stuck: bool) -> dict[str, Any]:
        if self.failure is not None:
            print(f"patchguard: the guard failed: {visible(self.failure)}", file=sys.stderr)
            return {
                "event": "stop",
                "requested": False,
                "failed": self.failure,
                "phase": self.progress.phase,
                "message": f"the guard failed in {self.progress.phase}: {self.failure}",
            }
        assert sent is not None
        requested = stops.take_request(stops.state_dir(self.config), os.getpid())
        event = {
            "event": "stop",
            "requested": requested,
            "signal": sent.signal,
            "by": sent.as_dict(),
            "phase": self.progress.phase,
            "left_running": self.progress.phase if stuck else None,
        }
        if not requested:
            event["message"] = (
                f"stopped by {sent.signal} from {sent.text()}, not asked for through systemctl stop"
            )
        return event

    def _close(self, event: dict[str, Any], deadline: float) -> None:
        """The fleet server hears of the stop, and the run is written down, each in bounded
        time; then the sinks stop."""
        guard = self.guard
        with contextlib.suppress(Exception):
            stops.record_stop(self.config, event)
        if guard is not None and guard.server is not None:
            reason = event.get("message") or "the guard stopped"
            told = threading.Thread(target=guard.server.stop, args=(reason,), daemon=True)
            told.start()
            told.join(max(0.1, deadline - SINK_GRACE - time.monotonic()))
        self.outlets.close(SINK_GRACE)
