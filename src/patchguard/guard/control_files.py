"""Told by the VFS: every successful write(2) reaches fsnotify (vfs_write -> fsnotify_modify),
files of tracefs, debugfs, procfs and securityfs included. An inotify watch on the control
files through which kprobes, uprobes and ftrace users are added (kprobe_events,
set_ftrace_filter, current_tracer, ...) therefore wakes the guard when one is written. Its ring
buffer (kernel_events.py) cannot: write(2) is not one of the syscalls its program watches.

Like the ring buffer this is only a doorbell: what changed is still read by the triggers. A
file this kernel lacks is skipped; where none can be watched, polling is the fallback. Files
in tracefs instances (instances/*/) and eventfs enable files are not watched.
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
READ_SIZE = 64 * 1024  # events are read until the queue is empty, this much at a time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def _inotify() -> int:
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        raise KernelAccessError("inotify_init1", explain_errno(ctypes.get_errno()))
    return fd


def _add_watch(fd: int, path: str) -> bool:
    """False if the file cannot be watched (absent on this kernel, or not reachable)."""
    return int(_libc.inotify_add_watch(fd, os.fsencode(path), WATCH_MASK)) >= 0


def count_events(data: bytes) -> int:
    """How many inotify events `data` (one read of the inotify fd) holds."""
    count, at = 0, 0
    while at + EVENT_HEADER.size <= len(data):
        at += EVENT_HEADER.size + EVENT_HEADER.unpack_from(data, at)[3]
        count += 1
    return count


class ControlFileWatch:
    """One inotify instance watching the control files; `fileno()` is readable once one of
    them is written. close() removes every watch."""

    def __init__(self, fd: int, watched: Sequence[str]) -> None:
        self.fd = fd
        self.watched = tuple(watched)
        self.events = 0  # inotify events read so far

    @classmethod
    def open(cls, paths: Sequence[str] = CONTROL_FILES) -> ControlFileWatch:
        """Watch every path that exists; KernelAccessError if none can be (then the guard
        only polls for what they control)."""
        fd = _inotify()
        watched = [path for path in paths if _add_watch(fd, path)]
        if not watched:
            os.close(fd)
            raise KernelAccessError("inotify", "none of the control files can be watched")
        return cls(fd, watched)

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        """Read every queued event; how many there were."""
        count = 0
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.fd, READ_SIZE):
                count += count_events(data)
        self.events += count
        return count

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
