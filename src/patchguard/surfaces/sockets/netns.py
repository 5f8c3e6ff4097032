"""Running a read inside another network namespace without ever leaving our own.

setns(2) with CLONE_NEWNET moves only the calling thread (a multi-threaded process may do
so), so the work runs in a short-lived thread that enters the namespace first: its netlink
and probing sockets are created there, and its /proc/thread-self/net is that namespace's.
The thread ends with the work; the scanner's other threads never change namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from patchguard.kernel.errors import KernelAccessError, explain_errno, oserror_reason

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
THREAD_NET = "/proc/thread-self/net"
THREAD_NS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


def current_netns() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat(THREAD_NS).st_ino


def _enter(path: str, inode: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise KernelAccessError(f"setns({path})", explain_errno(ctypes.get_errno()))
    finally:
        os.close(fd)
    if current_netns() != inode:  # the pid exited and its number was reused meanwhile
        raise KernelAccessError(f"setns({path})", f"not net:[{inode}] any more")


def run_in(path: str, inode: int, work: Callable[[], T]) -> T:
    """work() in a thread that entered the namespace `path` names (it must be `inode`)."""
    result: list[T] = []
    failed: list[BaseException] = []

    def body() -> None:
        try:
            _enter(path, inode)
            result.append(work())
        except Exception as exc:  # handed to the caller's thread, raised there
            failed.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{inode}")
    thread.start()
    thread.join()
    if failed:
        exc = failed[0]
        if isinstance(exc, OSError):
            raise KernelAccessError(f"net:[{inode}] via {path}", oserror_reason(exc)) from exc
        raise exc
    return result[0]


__all__ = ["THREAD_NET", "current_netns", "run_in"]
