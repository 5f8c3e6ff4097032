"""Stops that were asked for, and those that were not.

`systemctl stop` runs the unit's ExecStop (`patchguard guard --stop-requested $MAINPID`)
before systemd sends SIGTERM: that writes `stop-requested` in the guard's state directory,
naming the pid to stop. A SIGTERM that finds no such request for its own pid came from someone
else, and is announced as such with its sender. Each run is written down in the guard's
signed state (state.py) when it starts and when it stops, so a run that ended without a stop
(SIGKILL, a crash, a power cut) or with one nobody asked for is announced at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchguard.atomic import write_atomic
from patchguard.guard import state as guard_state
from patchguard.guard.config import GuardConfig
from patchguard.safe_read import InputError, parse_json, read_bounded
from patchguard.text import visible

REQUEST = "stop-requested"
REQUEST_TTL = 120.0  # seconds: an old request (its stop never came) is not reused


@dataclass(frozen=True)
class Sender:
    signal: str
    pid: int
    uid: int
    comm: str | None
    exe: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "comm": self.comm, "exe": self.exe}

    def text(self) -> str:
        name = self.exe or self.comm or "a process gone since"
        return f"pid {self.pid} ({visible(name)}, uid {self.uid})"


def _proc_text(pid: int, name: str) -> str | None:
    try:
        if name == "exe":
            return os.readlink(f"/proc/{pid}/exe")
        return Path(f"/proc/{pid}/{name}").read_text()[:64].strip()
    except OSError:
        return None


def sender_of(info: signal.struct_siginfo) -> Sender:
    """Who sent a signal, from its siginfo (pid 0: the kernel)."""
    pid = info.si_pid
    name = signal.Signals(info.si_signo).name
    return Sender(name, pid, info.si_uid, _proc_text(pid, "comm"), _proc_text(pid, "exe"))


def state_dir(config: GuardConfig) -> Path:
    return config.state_dir


def write_request(directory: Path, pid: int) -> Path:
    """What ExecStop leaves for the guard: the pid it is about to stop, and when."""
    path = directory / REQUEST
    body = json.dumps({"pid": pid, "time": time.time()}).encode()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, body, 0o600)
    return path


def take_request(directory: Path, pid: int) -> bool:
    """Whether a stop of `pid` was asked for lately (the request is used up)."""
    path = directory / REQUEST
    try:
        doc = parse_json(read_bounded(path, "signature"), str(path))
    except InputError:
        return False
    with contextlib.suppress(OSError):
        path.unlink()
    if not isinstance(doc, dict) or doc.get("pid") != pid:
        return False
    when = doc.get("time")
    return isinstance(when, int | float) and 0 <= time.time() - when <= REQUEST_TTL


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def run_started() -> dict[str, Any]:
    """The record of this run, to keep while it runs."""
    return {"pid": os.getpid(), "boot_id": boot_id(), "started": time.time(), "stopped": None}


def last_run_event(previous: dict[str, Any]) -> dict[str, Any] | None:
    """How the last run ended, when that is worth saying: not stopped at all (killed, crashed,
    or the host went down under it), or stopped by a signal nobody asked for."""
    if not previous:
        return None
    if previous.get("stopped") is None:
        rebooted = previous.get("boot_id") != boot_id()
        how = "the host went down while it ran" if rebooted else "killed (SIGKILL) or crashed"
        return {
            "event": "last-run-unstopped",
            "pid": previous.get("pid"),
            "rebooted": rebooted,
            "message": f"the guard's last run (pid {previous.get('pid')}) ended without a "
            f"stop: {how}",
        }
    stop = previous.get("stop") or {}
    if stop.get("requested", True):
        return None
    return {
        "event": "last-stop-unrequested",
        "pid": previous.get("pid"),
        "stop": stop,
        "message": "the guard's last stop was not asked for through systemctl: "
        + str(stop.get("message") or stop.get("failed") or "no reason recorded"),
    }


def record_stop(config: GuardConfig, event: dict[str, Any]) -> None:
    """Write this run's stop into the signed state (kept as it was otherwise)."""
    from patchguard.signing import HostKey

    key = HostKey.load(config.key)
    path = config.state_dir / guard_state.NAME
    current, _problem = guard_state.load(path, key.public_key_bytes())
    state = current or guard_state.GuardState()
    if state.run.get("pid") != os.getpid():
        return  # not this run's record (the worker never got to write it): nothing to close
    stop = {k: event.get(k) for k in ("requested", "signal", "by", "failed", "message")}
    guard_state.save(path, state.with_run(stopped=time.time(), stop=stop), key)
