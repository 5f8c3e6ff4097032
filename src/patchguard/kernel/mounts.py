"""The pseudo file systems patchguard reads, mounted read-only on demand where they are missing.

A stock system mounts them; minimal VMs and containers often do not. Mounting them read-only
changes nothing the kernel protects, so `scan` does it rather than report a gap. bpffs is not
here: every mount of it is a new, empty instance, so pins are found in the mounts that exist.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

PSEUDO_FS = {
    "securityfs": "/sys/kernel/security",
    "tracefs": "/sys/kernel/tracing",
    "debugfs": "/sys/kernel/debug",
}
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8


def mounted_types(mountinfo: str) -> dict[str, str]:
    """Mount point -> file system type, from /proc/self/mountinfo text."""
    points: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        points[fields[4].replace("\\040", " ")] = right.split()[0]
    return points


def ensure_mounted(fstype: str, root: Path = Path("/"), readonly: bool = True) -> str | None:
    """Mount `fstype` at its usual place if it is not there; None on success, else the reason.

    Only on the live system (root "/"): a captured tree is read as it is.
    """
    target = PSEUDO_FS[fstype]
    if root != Path("/"):
        return None if (root / target.lstrip("/")).is_dir() else f"{target} not captured"
    try:
        points = mounted_types(Path("/proc/self/mountinfo").read_text())
    except OSError as exc:
        return f"cannot read /proc/self/mountinfo: {exc.strerror}"
    if points.get(target) == fstype:
        return None
    if not os.path.isdir(target):
        return f"{target} does not exist: the kernel is built without {fstype}"
    libc = ctypes.CDLL(None, use_errno=True)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (MS_RDONLY if readonly else 0)
    rc = libc.mount(fstype.encode(), target.encode(), fstype.encode(), flags, None)
    if rc != 0:
        err = ctypes.get_errno()
        return f"{fstype} is not mounted at {target} and mounting it failed: {os.strerror(err)}"
    return None
