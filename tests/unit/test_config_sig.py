"""The guard config's signature: valid when the host key signed the file as it is; a file
edited after signing, a signature by another key, or a corrupt .sig is refused with a reason;
an unsigned config is said to be unsigned."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from patchguard.guard.config_sig import (
    check_config,
    check_with_host_key,
    sign_config,
    signature_path,
)
from patchguard.signing import HostKey

CONFIG = b'[guard]\nbaseline = ""\nsweep_mean = 60\n'


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, HostKey]:
    config = tmp_path / "guard.toml"
    config.write_bytes(CONFIG)
    key = HostKey.load_or_create(tmp_path / "host.key")
    assert sign_config(config, key) == signature_path(config)
    return config, key


def test_signed_config_verifies(signed: tuple[Path, HostKey]) -> None:
    config, key = signed
    check = check_config(config, key.public_key_bytes())
    assert check.ok and not check.missing and key.fingerprint() in check.reason


def test_edit_after_signing_is_refused(signed: tuple[Path, HostKey]) -> None:
    config, key = signed
    config.write_bytes(CONFIG.replace(b"60", b"6000"))
    check = check_config(config, key.public_key_bytes())
    assert not check.ok and not check.missing and "changed since it was signed" in check.reason


def test_another_key_is_refused(signed: tuple[Path, HostKey]) -> None:
    config, _ = signed
    other = HostKey.generate()
    check = check_config(config, other.public_key_bytes())
    assert not check.ok and f"not signed by this host's key {other.fingerprint()}" in check.reason


def test_forged_signature_over_an_edit_is_refused(signed: tuple[Path, HostKey]) -> None:
    config, key = signed
    config.write_bytes(CONFIG + b"# more\n")  # the attacker also puts the new sha256 in .sig
    sig = signature_path(config)
    doc = json.loads(sig.read_text())
    doc["sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    sig.write_text(json.dumps(doc))
    check = check_config(config, key.public_key_bytes())
    assert not check.ok and "not signed by this host's key" in check.reason


def test_corrupt_signature_file_says_so(signed: tuple[Path, HostKey]) -> None:
    config, key = signed
    signature_path(config).write_text("{not json")
    check = check_config(config, key.public_key_bytes())
    assert not check.ok and not check.missing and "unreadable signature" in check.reason


def test_unsigned_config_needs_no_key(tmp_path: Path) -> None:
    config = tmp_path / "guard.toml"
    config.write_bytes(CONFIG)
    check = check_with_host_key(config, tmp_path / "no-such.key")
    assert check.missing and not check.ok and "no signature" in check.reason


def test_signed_config_without_the_host_key_cannot_pass(signed: tuple[Path, HostKey]) -> None:
    config, _ = signed
    check = check_with_host_key(config, config.parent / "gone.key")
    assert not check.ok and not check.missing and "cannot check" in check.reason
