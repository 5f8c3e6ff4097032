"""Write a file so that a crash or a full disk leaves the old one or the new one, never half of
one: a temporary file beside it (mode set before any byte is written), fsynced, renamed over
it, and the directory fsynced so the rename itself survives a crash."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot fsync a directory
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """`durable=False`: renamed in place without waiting for the disk (the old file or the new
    one, whole, for every reader; a power cut may bring the old one back until `sync(path)`).
    For a write that must not wait behind other processes' fsyncs; `sync` it afterwards."""
    # mkstemp creates the file 0600: nothing is readable by others before the chmod.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def sync(path: Path) -> None:
    """Make a `write_atomic(..., durable=False)` durable: the file, then its directory."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
