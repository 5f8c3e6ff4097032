"""Reading a file through a child process (kernel/child_read.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchguard.kernel import child_read


def read_in_child(path: Path) -> bytes:
    return child_read.ChildRead(path).result()


def test_reads_what_a_read_reads(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"\n\0tail"
    path = tmp_path / "big"
    path.write_bytes(data)
    assert read_in_child(path) == data
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert read_in_child(empty) == b""


def test_a_pseudo_file_reads_whole() -> None:
    # /proc/self/... would be the child's own; /proc/filesystems is the same for both
    assert read_in_child(Path("/proc/filesystems")) == Path("/proc/filesystems").read_bytes()


def test_errors_are_those_of_an_ordinary_read(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_in_child(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        read_in_child(tmp_path)


def test_without_a_child_it_reads_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(child_read.os, "fork", no_fork)
    assert read_in_child(path) == b"x" * 10


def test_the_reader_is_this_process_not_a_tool_named_cat(tmp_path: Path) -> None:
    # /proc/self/comm and exe as the reader sees them: a rootkit filters reads by these
    assert read_in_child(Path("/proc/self/comm")) == Path("/proc/self/comm").read_bytes()
    cmdline = read_in_child(Path("/proc/self/cmdline"))
    assert cmdline == Path("/proc/self/cmdline").read_bytes()


def test_a_path_like_an_option_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("-n").write_bytes(b"not an option\n")
    assert read_in_child(Path("-n")) == b"not an option\n"


def test_started_now_waited_for_later(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    read = child_read.ChildRead(path)
    path.write_bytes(b"changed")  # cat may have read it already, or may not: either is whole
    assert read.result() in (b"abc" * 1000, b"changed")


def test_a_read_forgotten_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    before = set(os.listdir("/proc/self/fd"))
    read = child_read.ChildRead(path)
    pid = read._pid
    read.close()
    read.close()  # twice is harmless
    assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
