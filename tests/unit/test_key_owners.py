"""Host keys are refused, as sshd refuses its own, when someone else could have swapped them:
a key owned by another user, or in a directory others may write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchguard.signing import HostKey, KeyFileError

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "host.key"
    HostKey.load_or_create(path)
    return path


def test_a_key_in_a_private_directory_loads(key_path: Path) -> None:
    assert HostKey.load(key_path).path == key_path


def test_a_directory_others_can_write_is_refused(key_path: Path) -> None:
    key_path.parent.chmod(0o777)
    with pytest.raises(KeyFileError, match=r"directory is writable by others \(mode 0777\)"):
        HostKey.load(key_path)


def test_a_sticky_shared_directory_passes(key_path: Path) -> None:
    key_path.parent.chmod(0o1777)  # like /tmp: no one can replace another's file
    HostKey.load(key_path)


@needs_root
def test_a_key_owned_by_another_user_is_refused(key_path: Path) -> None:
    os.chown(key_path, NOBODY, NOBODY)
    with pytest.raises(KeyFileError, match=f"owned by uid {NOBODY}"):
        HostKey.load(key_path)


@needs_root
def test_a_directory_owned_by_another_user_is_refused(key_path: Path) -> None:
    os.chown(key_path.parent, NOBODY, NOBODY)
    with pytest.raises(KeyFileError, match=f"directory is owned by uid {NOBODY}"):
        HostKey.load(key_path)
