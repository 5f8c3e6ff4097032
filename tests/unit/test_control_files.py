"""The control-file watch (guard/control_files.py) on files of its own (inotify on a temporary
directory, the kernel's own, no stand-in): a write ends the guard's wait as "inotify", a read
does not, a truncating open without a write does, absent files are skipped, a watch with
nothing to watch is refused, and an instance's files are watched whether it was there at start
or made later. The tracefs files themselves are proven live and in the lab."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchguard.guard.control_files import (
    EVENT_HEADER,
    IN_CREATE,
    ControlFileWatch,
    parse_events,
)
from patchguard.guard.kernel_events import Waiter
from patchguard.kernel.errors import KernelAccessError


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[Path, Waiter, ControlFileWatch]]:
    probe_file = tmp_path / "kprobe_events"
    probe_file.write_text("")
    watch = ControlFileWatch.open(
        [str(tmp_path / "absent"), str(probe_file)], instances=str(tmp_path / "no-instances")
    )
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
        ControlFileWatch.open([str(tmp_path / "absent")], instances=str(tmp_path / "none"))


def test_events_are_read_with_their_names() -> None:
    named = EVENT_HEADER.pack(1, IN_CREATE, 0, 16) + b"tracer_one".ljust(16, b"\0")
    assert parse_events(named + EVENT_HEADER.pack(2, 8, 0, 0)) == [
        (1, IN_CREATE, "tracer_one"),
        (2, 8, ""),
    ]
    assert parse_events(b"") == []


def _instance(instances: Path, name: str) -> Path:
    (instances / name).mkdir()
    tracer = instances / name / "current_tracer"
    tracer.write_text("nop\n")
    return tracer


def test_an_instance_there_at_start_is_watched(tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    instances.mkdir()
    tracer = _instance(instances, "old")
    watch = ControlFileWatch.open([], instances=str(instances))
    try:
        assert watch.watched == (str(tracer),)
    finally:
        watch.close()


def test_an_instance_made_later_rings_and_its_files_are_watched_from_then_on(
    tmp_path: Path,
) -> None:
    instances = tmp_path / "instances"
    instances.mkdir()
    tracer = _instance(instances, "old")
    watch = ControlFileWatch.open([], instances=str(instances))
    waiter = Waiter()
    waiter.listen("inotify", watch)
    try:
        new_tracer = _instance(instances, "new")
        assert waiter.wait(5) == "inotify"  # the mkdir
        assert str(new_tracer) in watch.watched and str(tracer) in watch.watched
        new_tracer.write_text("function\n")
        assert waiter.wait(5) == "inotify"
    finally:
        waiter.close()
        watch.close()
