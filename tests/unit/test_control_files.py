"""The control-file watch (guard/control_files.py) on files of its own (inotify on a temporary
directory, the kernel's own, no stand-in): a write ends the guard's wait as "inotify", a read
does not, a truncating open without a write does, absent files are skipped, and a watch with
nothing to watch is refused. The tracefs files themselves are proven live and in the lab."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchguard.guard.control_files import EVENT_HEADER, ControlFileWatch, count_events
from patchguard.guard.kernel_events import Waiter
from patchguard.kernel.errors import KernelAccessError


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[Path, Waiter, ControlFileWatch]]:
    probe_file = tmp_path / "kprobe_events"
    probe_file.write_text("")
    watch = ControlFileWatch.open([str(tmp_path / "absent"), str(probe_file)])
    waiter = Waiter()
    waiter.listen("inotify", watch)
    try:
        yield probe_file, waiter, watch
    finally:
        waiter.close()
        watch.close()


def test_only_the_files_that_exist_are_watched(
    control: tuple[Path, Waiter, ControlFileWatch],
) -> None:
    probe_file, _, watch = control
    assert watch.watched == (str(probe_file),)


def test_a_write_ends_the_wait_and_is_drained(
    control: tuple[Path, Waiter, ControlFileWatch],
) -> None:
    probe_file, waiter, watch = control
    with probe_file.open("a") as f:
        f.write("p:kprobes/x vfs_read\n")
    assert waiter.wait(5) == "inotify"
    assert watch.events == 2  # the write, then the close of a file open for writing
    assert waiter.wait(0.05) == "poll"  # drained: nothing rings twice


def test_a_read_does_not_ring(control: tuple[Path, Waiter, ControlFileWatch]) -> None:
    probe_file, waiter, _ = control
    probe_file.read_text()
    assert waiter.wait(0.05) == "poll"


def test_a_truncating_open_without_a_write_rings(
    control: tuple[Path, Waiter, ControlFileWatch],
) -> None:
    """`> kprobe_events` clears every probe and writes nothing: only its close tells."""
    probe_file, waiter, _ = control
    os.close(os.open(probe_file, os.O_WRONLY | os.O_TRUNC))
    assert waiter.wait(5) == "inotify"


def test_nothing_to_watch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KernelAccessError, match="none of the control files"):
        ControlFileWatch.open([str(tmp_path / "absent")])


def test_events_with_names_are_counted_by_their_length() -> None:
    named = EVENT_HEADER.pack(1, 2, 0, 16) + b"kprobe_events".ljust(16, b"\0")
    assert count_events(named + EVENT_HEADER.pack(1, 8, 0, 0)) == 2
    assert count_events(b"") == 0
