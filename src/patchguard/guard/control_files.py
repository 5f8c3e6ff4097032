"""Told by the VFS: every successful write(2) reaches fsnotify (vfs_write -> fsnotify_modify),
files of tracefs, debugfs, procfs and securityfs included. An inotify watch on the control
files through which kprobes, uprobes and ftrace users are added (kprobe_events,
set_ftrace_filter, current_tracer, ...) therefore wakes the guard when one is written. Its ring
buffer (kernel_events.py) cannot: write(2) is not one of the syscalls its program watches.
Each tracefs instance (instances/<name>/) has its own function tracer: its control files are
watched too, those of an instance made later as soon as its directory appears.

Like the ring buffer this is only a doorbell: what changed is still read by the triggers. A
file this kernel lacks is skipped; where none can be watched, polling is the fallback. The
eventfs `enable` files are not watched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Sequence

from patchguard.kernel.errors import KernelAccessError, explain_errno

IN_MODIFY = 0x2
# A write-mode open that truncates (`> kprobe_events` clears every probe) writes nothing, so
# only its close tells of it.
IN_CLOSE_WRITE = 0x8
IN_CREATE = 0x100
WATCH_MASK = IN_MODIFY | IN_CLOSE_WRITE
EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then name)
TRACEFS = "/sys/kernel/tracing"  # the same inodes as /sys/kernel/debug/tracing
CONTROL_FILES = (
    *(
        f"{TRACEFS}/{name}"
        for name in (
            "kprobe_events",  # kprobes and kretprobes
            "uprobe_events",
            "dynamic_events",  # every dynamic event type: kprobes, uprobes, eprobes, fprobes
            "current_tracer",  # function and function_graph hook every traceable function
            "set_ftrace_filter",
            "set_ftrace_notrace",
            "set_graph_function",
            "set_graph_notrace",
            "function_profile_enabled",  # registers its own ftrace ops
        )
    ),
    "/sys/kernel/debug/kprobes/enabled",  # arms or disarms every kprobe at once
    "/proc/sys/debug/kprobes-optimization",  # turns kprobes into jumps (kprobes/list shows it)
    "/proc/sys/kernel/ftrace_enabled",  # stops or restarts every ftrace user
    "/proc/sys/kernel/stack_tracer_enabled",  # registers the stack tracer's ftrace ops
    "/proc/sys/kernel/tainted",  # read by the posture trigger
    "/sys/kernel/security/lockdown",  # read by the posture trigger
)
INSTANCES = f"{TRACEFS}/instances"
# What an instance's own function tracer is steered by.
INSTANCE_FILES = (
    "current_tracer",
    "set_ftrace_filter",
    "set_ftrace_notrace",
    "set_graph_function",
    "set_graph_notrace",
)
READ_SIZE = 64 * 1024  # events are read until the queue is empty, this much at a time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def _inotify() -> int:
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        raise KernelAccessError("inotify_init1", explain_errno(ctypes.get_errno()))
    return fd


def _add_watch(fd: int, path: str, mask: int = WATCH_MASK) -> int:
    """The watch descriptor; negative if the file cannot be watched (absent on this kernel,
    or not reachable)."""
    return int(_libc.inotify_add_watch(fd, os.fsencode(path), mask))


def parse_events(data: bytes) -> list[tuple[int, int, str]]:
    """The events `data` (one read of the inotify fd) holds: (watch, mask, name)."""
    found, at = [], 0
    while at + EVENT_HEADER.size <= len(data):
        wd, mask, _, length = EVENT_HEADER.unpack_from(data, at)
        at += EVENT_HEADER.size
        name = data[at : at + length].rstrip(b"\0")
        found.append((wd, mask, os.fsdecode(name)))
        at += length
    return found


def _instance_files(instances: str, name: str) -> list[str]:
    return [f"{instances}/{name}/{file}" for file in INSTANCE_FILES]


def _existing_instances(instances: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(instances) if e.is_dir())
    except OSError:
        return []


class ControlFileWatch:
    """One inotify instance watching the control files; `fileno()` is readable once one of
    them is written, or a tracefs instance is made. close() removes every watch."""

    def __init__(self, fd: int, instances: str, instances_wd: int) -> None:
        self.fd = fd
        self.instances, self._instances_wd = instances, instances_wd
        self.watched: tuple[str, ...] = ()
        self.events = 0  # inotify events read so far

    @classmethod
    def open(
        cls, paths: Sequence[str] = CONTROL_FILES, instances: str = INSTANCES
    ) -> ControlFileWatch:
        """Watch every path that exists, and the instances; KernelAccessError if nothing can
        be watched (then the guard only polls for what they control)."""
        fd = _inotify()
        watch = cls(fd, instances, _add_watch(fd, instances, IN_CREATE))
        watch._add(paths)
        for name in _existing_instances(instances):
            watch._add(_instance_files(instances, name))
        if not watch.watched:
            watch.close()
            raise KernelAccessError("inotify", "none of the control files can be watched")
        return watch

    def _add(self, paths: Sequence[str]) -> None:
        self.watched += tuple(path for path in paths if _add_watch(self.fd, path) >= 0)

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        """Read every queued event; how many there were. A new instance's files are watched
        from here on (a write before that is seen by the trigger check this wake runs)."""
        found: list[tuple[int, int, str]] = []
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.fd, READ_SIZE):
                found += parse_events(data)
        for wd, mask, name in found:
            if wd == self._instances_wd and mask & IN_CREATE:
                self._add(_instance_files(self.instances, name))
        self.events += len(found)
        return len(found)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
