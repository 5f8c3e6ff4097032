"""Errors of the kernel access layer: each names the file or call and says plainly what is wrong."""

from __future__ import annotations

import errno
import os


class KernelAccessError(Exception):
    """The kernel (or a captured tree) could not be read; str() is one line for the user."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def explain_errno(err: int) -> str:
    """A plain reason for an errno, naming the errno as the kernel docs do."""
    name = errno.errorcode.get(err, str(err))
    plain = {
        errno.EPERM: "operation not permitted by the kernel",
        errno.EACCES: "permission denied",
        errno.ENOENT: "not present on this kernel",
        errno.EINVAL: "rejected as invalid by this kernel",
        errno.EOPNOTSUPP: "not supported by this kernel",
        errno.ENOSYS: "system call not implemented",
        errno.E2BIG: "this kernel does not know an attribute we passed",
        errno.EFAULT: "the kernel could not read the memory asked for",
    }.get(err, os.strerror(err).lower())
    return f"{plain} ({name})"


def oserror_reason(exc: OSError) -> str:
    return explain_errno(exc.errno) if exc.errno is not None else str(exc)


def is_enoent(exc: KernelAccessError) -> bool:
    """The file is not there (as opposed to refused or unreadable)."""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.ENOENT
