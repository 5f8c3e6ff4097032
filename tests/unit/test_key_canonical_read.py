"""The host key read without cryptography's serialization package: only the exact form
patchguard writes is read that way (signing._canonical_seed), and wherever it reads a key it
reads the same key the library does; every other file goes to the library as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patchguard.signing import HostKey, KeyFileError, _canonical_seed


def pkcs8_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def library_seed(pem: bytes) -> bytes | None:
    """The seed cryptography reads from `pem`, or None where it refuses it or it is not
    ed25519."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None
    return key.private_bytes_raw() if isinstance(key, Ed25519PrivateKey) else None


def write_key(path: Path, pem: bytes) -> Path:
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    return path


def test_keys_patchguard_writes_are_read_by_the_canonical_form() -> None:
    for _ in range(50):
        key = Ed25519PrivateKey.generate()
        assert _canonical_seed(pkcs8_pem(key)) == key.private_bytes_raw()


def test_no_one_byte_change_is_read_otherwise_than_by_the_library() -> None:
    pem = pkcs8_pem(Ed25519PrivateKey.generate())
    read = 0
    for at in range(len(pem)):
        for byte in (ord("A"), ord("z"), ord("/"), ord("="), ord(" "), 0x0D, 0x00):
            changed = pem[:at] + bytes([byte]) + pem[at + 1 :]
            seed = _canonical_seed(changed)
            if seed is not None:
                read += 1
                assert seed == library_seed(changed), (at, byte)
    # a changed seed character is still a key (another one): the property was exercised
    assert read > 40


def test_other_forms_of_a_valid_key_load_through_the_library(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = pkcs8_pem(key)
    begin, body, end = pem.strip().split(b"\n")
    forms = {
        "crlf": pem.replace(b"\n", b"\r\n"),
        "wrapped": b"\n".join([begin, body[:40], body[40:], end]) + b"\n",
        "leading text": b"a comment\n" + pem,
    }
    for name, form in forms.items():
        assert _canonical_seed(form) is None, name
        if library_seed(form) is None:
            continue  # the library refuses this form too: refused below as before
        loaded = HostKey.load(write_key(tmp_path / f"{name}.key", form))
        assert loaded.public_key_bytes() == key.public_key().public_bytes_raw(), name


def test_a_canonical_looking_key_of_another_algorithm_goes_to_the_library(
    tmp_path: Path,
) -> None:
    # ed448's PKCS8 header differs from ed25519's in its OID: never read as an ed25519 seed
    from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

    pem = pkcs8_pem(Ed448PrivateKey.generate())  # type: ignore[arg-type]
    assert _canonical_seed(pem) is None
    with pytest.raises(KeyFileError, match="not an ed25519 key \\(an ed448 key\\)"):
        HostKey.load(write_key(tmp_path / "host.key", pem))


def test_a_key_signs_the_same_read_either_way(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = pkcs8_pem(key)
    fast = HostKey.load(write_key(tmp_path / "fast.key", pem))
    slow = HostKey.load(write_key(tmp_path / "slow.key", pem.replace(b"\n", b"\r\n")))
    assert fast.sign(b"data") == slow.sign(b"data") == key.sign(b"data")  # ed25519: deterministic
    assert fast.fingerprint() == slow.fingerprint()


def test_loading_and_signing_imports_no_serialization_package(tmp_path: Path) -> None:
    path = HostKey.load_or_create(tmp_path / "keys" / "host.key").path
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from patchguard.signing import HostKey\n"
        f"key = HostKey.load(Path({str(path)!r}))\n"
        "key.sign(b'x'), key.fingerprint()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    names = set(json.loads(done.stdout))
    assert "cryptography.hazmat.primitives.asymmetric.ed25519" in names
    assert not names & {"cryptography.hazmat.primitives.serialization", "bcrypt", "tempfile"}
