"""Run INSIDE the lab guest (6.1; by tests/lab/test_lab_guard_wake.py and bench/guard_guest.py):
the guard runs with its trigger poll every POLL seconds while hooks are added at random
moments, and for each one how long the guard took to report it and what woke it are written
to <results>/guest_guard_wake.json.

argv: RESULTS ROUNDS POLL. Each round adds, in a random order and with random pauses:
- module: pg_noop (tests/lab/modules/pg_noop.c) loaded with insmod (finit_module: the ring
  buffer), reported by the modules surface for its taint; then rmmod;
- kprobe_events: a kprobe written to tracefs kprobe_events (write(2): only inotify sees it);
- perf_kprobe: a kprobe opened through perf's kprobe PMU (perf_event_open: the ring buffer);
- uprobe_events: a uprobe written to tracefs uprobe_events (inotify; the kprobes list leaves
  uprobes out, so the dynamic_events trigger finds it);
- instance_tracer: a tracefs instance made (mkdir instances/<name>) and its own function tracer
  set on one function (its set_ftrace_filter, then its current_tracer: inotify, on files the
  guard began to watch when the instance appeared).
Each kprobe is on another syscall function (__x64_sys_*, which the tracing surface reports as
sensitive), so each is new to the guard. The time is from the call's return to the finding
line the guard prints: what an attacker races, with Python's own latency in it.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import random
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
from support.guard_process import Guard

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else "/results")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
POLL = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
TRACEFS = Path("/sys/kernel/tracing")
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe/type")
NR_PERF_EVENT_OPEN = 298
PERF_ATTR_SIZE_VER1 = 72  # through config2: config1 is the function's name, config2 the offset
PERF_FLAG_FD_CLOEXEC = 8
# Syscalls every process makes all the time: a probe armed there slows the whole guest.
HOT = {"read", "write", "openat", "close", "futex", "ppoll", "poll", "pselect6", "select"}
HOT |= {"epoll_wait", "epoll_pwait", "newfstatat", "fstat", "lseek", "mmap", "munmap", "brk"}
HOT |= {"ioctl", "rt_sigaction", "rt_sigprocmask", "wait4", "clock_nanosleep", "nanosleep"}
HOT |= {"bpf", "perf_event_open", "finit_module", "init_module", "delete_module", "execve"}
HOT |= {"clone", "clone3", "exit_group", "pread64", "statx", "fcntl", "getrandom", "mprotect"}
Event = dict[str, Any]
_libc = ctypes.CDLL(None, use_errno=True)


def syscall_functions() -> list[str]:
    """__x64_sys_* functions kprobes may probe, the hot ones left out, shuffled."""
    names = {
        line.split()[0]
        for line in (TRACEFS / "available_filter_functions").read_text().splitlines()
        if line.startswith("__x64_sys_")
    }
    blacklist = Path("/sys/kernel/debug/kprobes/blacklist").read_text()
    names -= {line.split()[-1] for line in blacklist.splitlines() if line.strip()}
    names = {n for n in names if n.removeprefix("__x64_sys_") not in HOT}
    return random.sample(sorted(names), len(names))


@contextmanager
def module_loaded() -> Iterator[str]:
    subprocess.run(["insmod", str(RESULTS / "pg_noop.ko")], check=True)
    try:
        yield "pg_noop"
    finally:
        subprocess.run(["rmmod", "pg_noop"], check=True)


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@contextmanager
def instance_tracer(function: str, n: int) -> Iterator[str]:
    instance = TRACEFS / "instances" / f"pg_wake_i{n}"
    instance.mkdir()
    try:
        _write(instance / "set_ftrace_filter", function + "\n")
        _write(instance / "current_tracer", "function\n")
        try:
            yield function
        finally:
            _write(instance / "current_tracer", "nop\n")
    finally:
        instance.rmdir()


def _append(name: str, line: str) -> None:
    """One write to tracefs file `name`, appended (Python's "a" mode seeks to the end, which
    tracefs refuses)."""
    fd = os.open(TRACEFS / name, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


@contextmanager
def kprobe_event(function: str, n: int) -> Iterator[str]:
    _append("kprobe_events", f"p:kprobes/pg_wake_{n} {function}")
    try:
        yield function
    finally:
        _append("kprobe_events", f"-:kprobes/pg_wake_{n}")


@contextmanager
def uprobe_event(n: int) -> Iterator[str]:
    """A uprobe event at the start of /bin/true (defined, not enabled: nothing runs it)."""
    _append("uprobe_events", f"p:uprobes/pg_wake_u{n} /bin/true:0x0")
    try:
        yield f"uprobes/pg_wake_u{n}"
    finally:
        _append("uprobe_events", f"-:uprobes/pg_wake_u{n}")


@contextmanager
def perf_kprobe(function: str) -> Iterator[str]:
    name = ctypes.create_string_buffer(function.encode())
    fields = struct.pack("<IIQQQQQIIQQ", int(KPROBE_PMU.read_text()), PERF_ATTR_SIZE_VER1, 0, 0,
                         0, 0, 0, 0, 0, ctypes.addressof(name), 0)  # fmt: skip
    attr = ctypes.create_string_buffer(fields, PERF_ATTR_SIZE_VER1)
    fd = _libc.syscall(NR_PERF_EVENT_OPEN, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"perf_event_open(kprobe {function})")
    try:
        yield function
    finally:
        os.close(fd)


def is_module(name: str) -> Callable[[Event], bool]:
    return lambda f: f.get("surface") == "modules" and name in json.dumps(f)


def is_kprobe(function: str) -> Callable[[Event], bool]:
    return lambda f: (
        f.get("technique") == "kprobe-sensitive-function"
        and f.get("evidence", {}).get("function") == function
    )


def is_hooked(function: str) -> Callable[[Event], bool]:
    return lambda f: (
        f.get("technique") == "ftrace-hook-sensitive-function"
        and str(f.get("subject", "")).split(" ")[0] == function
    )


def is_event(subject: str) -> Callable[[Event], bool]:
    return lambda f: f.get("technique") == "dynamic-uprobe-event" and f.get("subject") == subject


def next_finding(guard: Guard, match: Callable[[Event], bool], timeout: float) -> Event | None:
    """The first finding line from now on that `match`es (earlier lines are passed over)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = guard.events.get(timeout=left)
        except queue.Empty:
            return None
        guard.seen.append(event)
        if isinstance(event.get("finding"), dict) and match(event["finding"]):
            return event
    return None


def passed_over(guard: Guard) -> None:
    """Every line printed so far, kept in `seen` and not matched."""
    while True:
        try:
            guard.seen.append(guard.events.get_nowait())
        except queue.Empty:
            return


def timed(
    guard: Guard,
    kind: str,
    hook: AbstractContextManager[str],
    match: Callable[[str], Callable[[Event], bool]],
) -> Event:
    passed_over(guard)
    with hook as subject:
        added = time.monotonic()
        event = next_finding(guard, match(subject), 2 * POLL + 60)
        seconds = time.monotonic() - added
    if event is None:
        return {"kind": kind, "subject": subject, "missed": True}
    return {
        "kind": kind,
        "subject": subject,
        "seconds": round(seconds, 4),
        "woken_by": event.get("woken_by"),
        "why": event.get("why"),
    }


def rounds(guard: Guard) -> list[Event]:
    functions = iter(syscall_functions())
    done: list[Event] = []
    for n in range(ROUNDS):
        kinds = ["module", "kprobe_events", "perf_kprobe", "uprobe_events", "instance_tracer"]
        random.shuffle(kinds)
        for kind in kinds:
            time.sleep(random.uniform(0.2, 1.2) * POLL)  # a random phase of the poll
            if kind == "module":
                done.append(timed(guard, kind, module_loaded(), is_module))
                # the unload seen (delete_module rings too), so the next load is new
                time.sleep(max(POLL, 3.0))
            elif kind == "kprobe_events":
                done.append(timed(guard, kind, kprobe_event(next(functions), n), is_kprobe))
            elif kind == "perf_kprobe":
                done.append(timed(guard, kind, perf_kprobe(next(functions)), is_kprobe))
            elif kind == "uprobe_events":
                done.append(timed(guard, kind, uprobe_event(n), is_event))
            else:
                hooked = instance_tracer(next(functions), n)
                done.append(timed(guard, kind, hooked, is_hooked))
            print(f"guest_guard_wake: {done[-1]}", file=sys.stderr, flush=True)
    return done


def main() -> None:
    work = Path("/tmp/patchguard-guard-wake")
    work.mkdir(parents=True, exist_ok=True)
    config = work / "guard.toml"
    config.write_text(
        f'[guard]\nbaseline = ""\nspool = "{work / "spool"}"\n'
        f"trigger_interval = {POLL}\nsweep_mean = 3600\n"
    )
    guard = Guard(config)
    out: dict[str, Any] = {"rounds": ROUNDS, "poll": POLL}
    try:
        out["start"] = guard.event("start", 300)
        guard.event("sweep", 600)
        out["reactions"] = rounds(guard)
    except Exception:
        out["error"] = traceback.format_exc()
        out["trace_error_log"] = (TRACEFS / "error_log").read_text()[-2000:]
    finally:
        guard.proc.terminate()
        out["exit"] = guard.proc.wait(timeout=60)
        out["lines"] = guard.all_lines()
        out["stderr"] = "".join(guard.stderr)[-4000:]
        (RESULTS / "guest_guard_wake.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
