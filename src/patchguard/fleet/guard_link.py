"""The guard's link to the fleet server: each sweep and each new finding becomes a signed
message in the fleet spool, a heartbeat goes every `heartbeat` seconds, and a clean stop says
so (the server then calls the host `stopped`, not `silent`). A thread sends the spool in
order; while the server is unreachable the messages wait on disk.

The guard's config names it in a `[server]` table (docs/server.md):

    [server]
    state_dir = "/var/lib/patchguard"   # where `patchguard enrol` left the enrolment
    heartbeat = 60                      # seconds between heartbeats (1..86400)

`server_settings(table, path)` reads that table; the daemon makes a `ServerLink` from it and
calls `sweep`, `findings` and `stop`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.findings import Finding
from patchguard.fleet import client
from patchguard.fleet.report import fit, worst_first
from patchguard.signing import HostKey

DEFAULT_HEARTBEAT = 60
FINDINGS_PER_MESSAGE = 50  # at most 16 KiB of evidence each: well under a message's 1 MiB


@dataclass(frozen=True)
class ServerSettings:
    state_dir: Path
    heartbeat: int = DEFAULT_HEARTBEAT


def server_settings(table: Mapping[str, Any], path: Path) -> ServerSettings:
    """The guard config's `[server]` table; ValueError (naming the key) if it is wrong."""
    unknown = sorted(set(table) - {"state_dir", "heartbeat"})
    if unknown:
        raise ValueError(f"{path}: server.{unknown[0]}: unknown key")
    state = table.get("state_dir", str(client.DEFAULT_STATE))
    beat = table.get("heartbeat", DEFAULT_HEARTBEAT)
    if not isinstance(state, str) or not state:
        raise ValueError(f"{path}: server.state_dir: must be a directory path")
    if not isinstance(beat, int) or isinstance(beat, bool) or not 1 <= beat <= 86_400:
        raise ValueError(f"{path}: server.heartbeat: must be whole seconds from 1 to 86400")
    return ServerSettings(Path(state), beat)


class ServerLink:
    """Queues the guard's messages and sends them from its own thread."""

    def __init__(self, settings: ServerSettings, key: HostKey, baseline: Path | None) -> None:
        self.directory, self.heartbeat = settings.state_dir, settings.heartbeat
        self.key, self.baseline = key, baseline
        client.Enrolment.load(self.directory)  # not enrolled: FleetError now, not later
        self.last: client.Delivery | None = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self._turn = threading.Lock()  # the sender's turn: a delivery, or the stop
        self._stopping = threading.Event()  # a delivery under way ends at its next batch
        self._digest: str | None = None  # of the baseline, as the last message said
        self._thread = threading.Thread(target=self._run, name="fleet-server", daemon=True)
        self._queue("heartbeat", {"interval": self.heartbeat})
        self._thread.start()

    def _queue(self, kind: str, payload: Mapping[str, Any]) -> None:
        self._digest = client.baseline_digest(self.baseline) if self.baseline else None
        client.queue(self.directory, self.key, kind, payload, baseline_digest=self._digest)
        self._wake.set()

    def sweep(self, findings: Iterable[Finding], gaps: int = 0) -> None:
        chosen = [fit(f) for f in worst_first(findings)]
        self._queue("sweep", {"findings": chosen, "gaps": gaps})

    def findings(self, found: Iterable[Finding]) -> None:
        """The new findings of one look at a surface, FINDINGS_PER_MESSAGE to a message: a
        message each made a first sweep on a busy host dozens of messages, which a stop then
        had to wait behind (they go first: the server takes each host's messages in order)."""
        chosen = [fit(f) for f in worst_first(found)]
        for start in range(0, len(chosen), FINDINGS_PER_MESSAGE):
            self._queue("finding", {"findings": chosen[start : start + FINDINGS_PER_MESSAGE]})

    def rotated(self, reason: str) -> None:
        """A baseline rotation the guard accepted (a signed request made with the CLI): the
        server takes the new digest without a baseline-changed alert."""
        self._queue("baseline-rotated", {"reason": reason})

    def _run(self) -> None:
        """Heartbeat on time; send whenever something is queued, or retry every few seconds."""
        next_beat = time.monotonic() + self.heartbeat
        while not self._stop.is_set():
            self._wake.wait(min(5.0, max(0.0, next_beat - time.monotonic())))
            self._wake.clear()
            with self._turn:  # once stopped, nothing is sent after the stop
                if self._stop.is_set():
                    break
                if time.monotonic() >= next_beat:
                    self._queue("heartbeat", {"interval": self.heartbeat})
                    next_beat += self.heartbeat
                self._deliver()

    def _going(self) -> bool:
        return not self._stopping.is_set()

    def _deliver(self) -> None:
        try:
            self.last = client.deliver(self.directory, going=self._going)
        except (client.FleetError, OSError) as exc:  # logged by the caller's next look
            self.last = client.Delivery(0, -1, (), str(exc))

    def stop(self, reason: str = "the guard stopped") -> None:
        """Say so to the server, promptly (the guard gives this a second or so of its 2 s):
        after the delivery under way, if any, since what was queued before the stop must
        reach the server first, then the stop itself, sent straight away (client.send_last),
        or spooled for the next run if it cannot be. The thread then ends on its own; what is
        queued after this waits in the spool."""
        self._stopping.set()
        with self._turn:
            self._stop.set()
        self._wake.set()
        payload = {"reason": reason}
        digest = self._digest
        try:
            self.last = client.send_last(
                self.directory, self.key, "stop", payload, baseline_digest=digest
            )
        except (client.FleetError, OSError) as exc:
            self.last = client.Delivery(0, -1, (), str(exc))
