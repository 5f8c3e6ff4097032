"""What every lab test shares: the repository's bytecode compiled once on the host for the
guest.

The guest mounts the repository read-only and runs with PYTHONDONTWRITEBYTECODE, so without
__pycache__ files every patchguard command in it compiles each module it imports again, under
software emulation, tens of times a boot. The guest's CPython and the host's are the same
minor version (Debian bookworm's 3.11), so the host's .pyc files are valid there: CPython
checks them against the source's mtime and size, which the 9p share passes through.

PATCHGUARD_LAB_STREAM=first|second keeps one of the lab's two streams (lab_streams.py); the
other stream's tests are deselected. Two streams run at once, so the bytecode is compiled
under a lock (the second finds it current)."""

from __future__ import annotations

import compileall
import fcntl
import sys
import tempfile
from pathlib import Path

import pytest
from lab_streams import selected, streams, unit_of
from support.lab_guest import CACHE, REPO, lab_build

# Where the guest imports from: the package, the guest scripts and what they import.
FOR_THE_GUEST = ("src", "tests/lab", "tests/live", "tests/support")


def guest_python() -> str:
    """The guest's CPython as "3.11", from the Debian version the lab build recorded."""
    return ".".join(lab_build()["packages"]["python3"].split(".")[:2])


@pytest.fixture(scope="session", autouse=True)
def bytecode_for_the_guest() -> None:
    if not (CACHE / "current" / "lab.json").is_file():
        return  # every lab test skips, saying why
    if guest_python() != f"{sys.version_info.major}.{sys.version_info.minor}":
        return  # bytecode of another version would be ignored there
    with open(Path(tempfile.gettempdir()) / "patchguard-lab-bytecode.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for folder in FOR_THE_GUEST:
            compileall.compile_dir(REPO / folder, quiet=1, workers=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Only the selected stream's lab tests (PATCHGUARD_LAB_STREAM); every test if unset."""
    try:
        stream = selected()
    except ValueError as exc:  # one line from pytest, no traceback
        raise pytest.UsageError(str(exc)) from None
    lab = [i for i in items if i.nodeid.startswith("tests/lab/")]
    if stream is None or not lab:
        return
    stream_of = streams([unit_of(i.nodeid) for i in lab])
    other = [i for i in lab if stream_of[unit_of(i.nodeid)] != stream]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [i for i in items if i not in other]
