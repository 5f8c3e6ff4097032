"""The host signing key: created 0600 in a 0700 directory, loose or corrupt key files refused."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patchguard.signing import (
    DEFAULT_KEY_PATH,
    HostKey,
    KeyFileError,
    default_key_path,
    fingerprint_of,
    pem_private_key_loader,
    verify_signature,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def write_key_file(path: Path, pem: bytes, mode: int = 0o600) -> None:
    path.write_bytes(pem)
    os.chmod(path, mode)


def ed25519_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---------------------------------------------------------------------------- creating


def test_created_key_is_0600_in_a_0700_directory(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "lib" / "patchguard" / "host.key"
    key = HostKey.load_or_create(path)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.listdir(path.parent) == ["host.key"]  # no temporary file left
    assert key.path == path


def test_created_key_mode_is_exact_under_a_narrow_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would give 0400 and 0500 without the explicit chmod
    try:
        path = tmp_path / "d" / "host.key"
        HostKey.load_or_create(path)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    HostKey.load_or_create(tmp_path / "host.key")
    assert mode_of(tmp_path) == 0o755


def test_second_call_loads_the_same_key_without_rewriting(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    first = HostKey.load_or_create(path)
    before = path.stat()
    second = HostKey.load_or_create(path)
    after = path.stat()
    assert second.public_key_bytes() == first.public_key_bytes()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert HostKey.load(path).fingerprint() == first.fingerprint()


def test_create_fails_cleanly_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    path = tmp_path / "host.key"
    with pytest.raises(KeyFileError) as err:
        HostKey.load_or_create(path)
    assert one_line(err.value) == (
        f"{path}: cannot create the key file: no space left on device (ENOSPC)"
    )
    assert os.listdir(tmp_path) == []


def test_create_where_the_directory_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "lib").write_text("not a directory")
    path = tmp_path / "lib" / "host.key"
    with pytest.raises(KeyFileError) as err:
        HostKey.load_or_create(path)
    assert one_line(err.value) == f"{path}: cannot open the key file: not a directory (ENOTDIR)"


# ---------------------------------------------------------------------------- refusing


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        (0o644, "mode 0644 is too open (group and others can read it); chmod 600 it"),
        (0o640, "mode 0640 is too open (group can read it); chmod 600 it"),
        (0o602, "mode 0602 is too open (others can write it); chmod 600 it"),
        (0o660, "mode 0660 is too open (group can read or write it); chmod 600 it"),
    ],
)
def test_loose_permissions_are_refused(tmp_path: Path, mode: int, why: str) -> None:
    path = tmp_path / "host.key"
    pem = ed25519_pem()
    write_key_file(path, pem, mode)
    with pytest.raises(KeyFileError) as err:
        HostKey.load(path)
    assert one_line(err.value) == f"{path}: {why}"
    with pytest.raises(KeyFileError):  # and load_or_create neither uses nor replaces it
        HostKey.load_or_create(path)
    assert path.read_bytes() == pem
    assert mode_of(path) == mode


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    write_key_file(path, ed25519_pem(), 0o400)
    assert len(HostKey.load(path).public_key_bytes()) == 32


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n", "corrupt: not a PEM (PKCS8)"),
        (b"\x00" * 48, "corrupt: not a PEM (PKCS8)"),
        (b"", "the key file is empty"),
        (b"\n\n", "the key file is empty"),
    ],
)
def test_corrupt_key_is_refused_and_kept(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "host.key"
    write_key_file(path, content)
    with pytest.raises(KeyFileError) as err:
        HostKey.load_or_create(path)
    text = one_line(err.value)
    assert text.startswith(f"{path}: {why}")
    assert path.read_bytes() == content  # never silently replaced by a new key


def test_truncated_pem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    write_key_file(path, ed25519_pem()[:60])
    with pytest.raises(KeyFileError) as err:
        HostKey.load(path)
    assert "corrupt" in one_line(err.value)


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_key_file(path, pem)
    with pytest.raises(KeyFileError) as err:
        HostKey.load(path)
    text = one_line(err.value)
    assert text.startswith(f"{path}: not an ed25519 key")
    assert (
        text == f"{path}: not an ed25519 key (an EC secp256r1 key); patchguard signs with ed25519"
    )


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    write_key_file(path, pem)
    with pytest.raises(KeyFileError) as err:
        HostKey.load(path)
    assert one_line(err.value) == (
        f"{path}: the key is encrypted; patchguard needs an unencrypted key"
    )


def test_key_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError) as err:
        HostKey.load_or_create(path)
    assert one_line(err.value) == f"{path}: not a regular file; the host key must be a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_unreadable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    write_key_file(path, ed25519_pem(), 0o000)
    with pytest.raises(KeyFileError) as err:
        HostKey.load_or_create(path)
    assert "permission denied (EACCES)" in one_line(err.value)


def test_missing_key_for_load(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    with pytest.raises(KeyFileError) as err:
        HostKey.load(path)
    assert err.value.missing
    assert one_line(err.value) == (
        f"{path}: cannot open the key file: no such file or directory (ENOENT)"
    )
    assert not path.exists()


# ---------------------------------------------------------------------------- using


def test_sign_and_verify(tmp_path: Path) -> None:
    key = HostKey.load_or_create(tmp_path / "host.key")
    other = HostKey.generate()
    raw = key.public_key_bytes()
    data = b"manifest bytes"
    signature = key.sign(data)
    assert len(raw) == 32 and len(signature) == 64
    assert verify_signature(raw, data, signature)
    assert not verify_signature(raw, data + b"!", signature)
    assert not verify_signature(other.public_key_bytes(), data, signature)
    assert not verify_signature(raw, data, signature[:-1])
    assert not verify_signature(raw[:31], data, signature)
    assert not verify_signature(raw, data, b"\x00" * 64)


def test_fingerprint(tmp_path: Path) -> None:
    key = HostKey.load_or_create(tmp_path / "host.key")
    expected = hashlib.sha256(key.public_key_bytes()).hexdigest()[:16]
    assert key.fingerprint() == expected == fingerprint_of(key.public_key_bytes())
    assert key.fingerprint() != HostKey.generate().fingerprint()
    assert key.fingerprint() in repr(key)
    assert "PRIVATE" not in repr(key)


def test_default_key_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PATCHGUARD_KEY", raising=False)
    assert default_key_path() == DEFAULT_KEY_PATH == Path("/var/lib/patchguard/host.key")
    monkeypatch.setenv("PATCHGUARD_KEY", str(tmp_path / "k"))
    assert default_key_path() == tmp_path / "k"
    monkeypatch.setenv("PATCHGUARD_KEY", "")
    assert default_key_path() == DEFAULT_KEY_PATH


def test_the_pem_loader_is_cryptographys_own() -> None:
    """The key is read by the very function `serialization` exports, whichever module it is
    taken from (its package `__init__` is skipped only for speed)."""
    assert pem_private_key_loader() is serialization.load_pem_private_key
