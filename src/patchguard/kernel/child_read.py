"""Reading a large pseudo file in a child process, so that the read costs no GIL round trips,
and so that the reader is this very process, not a tool a rootkit can single out by name.

/proc/kallsyms hands out at most one page per read(2): its 5 MB take ~1,500 syscalls, and
Python releases and retakes the GIL around each. While another thread of the scan runs Python,
each retake waits for that thread to let go (up to the 5 ms switch interval): measured here,
39 ms alone and 6.9 s beside a thread that never lets go. A forked child has one thread and no
one to wait for: it copies the file into a memfd while our threads go on, and we take the
result in one pread(2).

The copier used to be `cat`; a rootkit seen in the wild filters what processes named `cat`
read (it showed 0 ftrace trampolines where a read in Python showed 23). The forked child is
patchguard itself: the same name, executable and credentials as the process that asked.
"""

from __future__ import annotations

import os
from pathlib import Path

CHUNK = 1 << 16


def _copy(path: Path, out: int) -> int:
    """In the child: the whole file into `out`; the exit code says whether it worked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        while block := os.read(fd, CHUNK):
            view = memoryview(block)
            while view:
                view = view[os.write(out, view) :]
        return 0
    except OSError:
        return 1


class ChildRead:
    """One file being read by a forked child into a memfd: started at once, waited for by
    result(). Anything that keeps the child from doing it (no memfd, no fork, a failed read)
    falls back to reading here, so a missing or refused file raises the OSError an ordinary
    read would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = -1
        self._pid = -1
        if not hasattr(os, "memfd_create"):
            return
        self._out = os.memfd_create("patchguard-read", os.MFD_CLOEXEC)
        try:
            self._pid = os.fork()
        except OSError:
            self._pid = -1
            return
        if self._pid == 0:  # the child: copy, then leave without running any cleanup
            os._exit(_copy(path, self._out))

    def result(self) -> bytes:
        """The whole file (OSError as a read here would raise it)."""
        try:
            if self._pid > 0:
                _, status = os.waitpid(self._pid, 0)
                self._pid = -1
                if os.waitstatus_to_exitcode(status) == 0:
                    return os.pread(self._out, os.fstat(self._out).st_size, 0)
            return self.path.read_bytes()
        finally:
            self.close()

    def close(self) -> None:
        """Forget the read: the child is waited for (it ends by itself), the memfd closed."""
        if self._pid > 0:
            os.waitpid(self._pid, 0)
            self._pid = -1
        if self._out >= 0:
            os.close(self._out)
            self._out = -1


__all__ = ["ChildRead"]
