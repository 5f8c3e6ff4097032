"""The host signing key: an ed25519 key that signs this host's baselines.

The key lives in one file, PEM (PKCS8, unencrypted), mode 0600, in a directory of mode
0700 (`/var/lib/patchguard/host.key` unless `PATCHGUARD_KEY` names another file). It is
created on first use, atomically: written to a temporary file in the same directory,
fsynced, then renamed over the final name, so a crash never leaves half a key behind.
A key file that group or others can reach is refused, as ssh refuses a loose private key.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# cryptography is imported where a key is used: commands that never sign or verify (scan,
# --version, --help) do not pay for it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_KEY_PATH = Path("/var/lib/patchguard/host.key")
KEY_ENV = "PATCHGUARD_KEY"
MAX_KEY_FILE = 64 * 1024  # a PEM ed25519 key is 119 bytes; anything huge is not a key


class KeyFileError(Exception):
    """The key file is missing, unreadable, too open or not an ed25519 key; str() is one line."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    @property
    def missing(self) -> bool:
        """The file (or its directory) does not exist, as opposed to being refused or corrupt."""
        cause = self.__cause__
        return isinstance(cause, OSError) and cause.errno == errno.ENOENT


def default_key_path() -> Path:
    """`PATCHGUARD_KEY` if set (and not empty), else DEFAULT_KEY_PATH."""
    override = os.environ.get(KEY_ENV, "")
    return Path(override) if override else DEFAULT_KEY_PATH


def fingerprint_of(public_key_raw: bytes) -> str:
    """First 16 hex digits of the SHA-256 of a raw 32-byte ed25519 public key."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def verify_signature(public_key_raw: bytes, data: bytes, signature: bytes) -> bool:
    """True if `signature` is the ed25519 signature of `data` by that raw public key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(signature, data)
    except (InvalidSignature, ValueError):  # ValueError: not a 32-byte public key
        return False
    return True


def _why(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else None
    text = (exc.strerror or str(exc)).lower()
    return f"{text} ({name})" if name else text


def _too_open(mode: int) -> str:
    """'group can read it', 'group and others can read or write it', ..."""
    who = [w for w, bits in (("group", 0o070), ("others", 0o007)) if mode & bits]
    can = [
        what
        for what, bits in (("read", 0o044), ("write", 0o022), ("execute", 0o011))
        if mode & bits
    ]
    return f"{' and '.join(who)} can {' or '.join(can)} it"


def _kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    if isinstance(key, Ed448PrivateKey):
        return "ed448"
    return "other"


def _check_owners(path: Path, st: os.stat_result) -> None:
    """As sshd does with its keys: the key must belong to root or to the user running, and no
    one else may write its directory (or they could swap the key for theirs). A directory
    with the sticky bit (/tmp) lets no one replace another's file, so it passes."""
    trusted = {0, os.geteuid()}
    if st.st_uid not in trusted:
        raise KeyFileError(path, f"owned by uid {st.st_uid}, not by root or this user; chown it")
    try:
        parent = os.stat(path.parent)
    except OSError as exc:
        raise KeyFileError(path, f"cannot check its directory: {_why(exc)}") from exc
    if parent.st_uid not in trusted:
        raise KeyFileError(path, f"its directory is owned by uid {parent.st_uid}, not by root")
    if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        mode = stat.S_IMODE(parent.st_mode)
        raise KeyFileError(
            path, f"its directory is writable by others (mode {mode:04o}); chmod go-w it"
        )


def _read_key_file(path: Path) -> bytes:
    """The key file's bytes, refused unless it is a regular file only its owner (root or
    this user) can reach, in a directory no one else can write."""
    try:
        # O_NONBLOCK: a FIFO put in the key's place must not hang the open (fstat refuses it)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise KeyFileError(path, f"cannot open the key file: {_why(exc)}") from exc
    try:
        st = os.fstat(fd)  # the file actually opened, not whatever the name points to later
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, "not a regular file; the host key must be a file")
        _check_owners(path, st)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                path, f"mode {mode:04o} is too open ({_too_open(mode)}); chmod 600 it"
            )
        try:
            pem = os.read(fd, MAX_KEY_FILE + 1)
        except OSError as exc:
            raise KeyFileError(path, f"cannot read the key file: {_why(exc)}") from exc
    finally:
        os.close(fd)
    if not pem.strip():
        raise KeyFileError(path, "the key file is empty; remove it to create a new key")
    if len(pem) > MAX_KEY_FILE:
        raise KeyFileError(path, "too large to be a PEM private key")
    return pem


def pem_private_key_loader() -> Callable[..., Any]:
    """cryptography's `serialization.load_pem_private_key`, the same function, taken from the
    binding module that package re-exports it from: the package's `__init__` also imports its
    SSH key support (~6 ms of a `check` process here, half a second in the lab's emulated
    guest), which a PEM key never needs. Any other cryptography gets the public import
    (tests/unit/test_keys.py holds the two to being one function)."""
    try:
        from cryptography.hazmat.bindings._rust import openssl

        loader: Callable[..., Any] = openssl.keys.load_pem_private_key
    except (ImportError, AttributeError):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        loader = load_pem_private_key
    return loader


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    """The key file's PEM, read by cryptography, which says what is wrong with it."""
    pem = _read_key_file(path)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = pem_private_key_loader()(pem, password=None)
    except TypeError as exc:  # encrypted with a passphrase
        raise KeyFileError(
            path, "the key is encrypted; patchguard needs an unencrypted key"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(path, "corrupt: not a PEM (PKCS8) private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            path, f"not an ed25519 key (an {_kind(key)} key); patchguard signs with ed25519"
        )
    return key


def _write_new_key(path: Path, pem: bytes) -> None:
    """Directory 0700 if missing; the key written atomically with mode 0600."""
    from patchguard.atomic import write_atomic  # its tempfile import only where a key is made

    parent = path.parent
    if not parent.is_dir():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(parent, 0o700)  # mkdir's mode is narrowed by the umask; make it exact
    write_atomic(path, pem, 0o600)


class HostKey:
    """This host's ed25519 signing key."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = private_key
        self.path = path

    @classmethod
    def generate(cls) -> HostKey:
        """A new key in memory only (tests, or a caller that stores it itself)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> HostKey:
        """Load an existing key; KeyFileError if missing, too open, corrupt or not ed25519."""
        return cls(_read_private_key(path), path)

    @classmethod
    def load_or_create(cls, path: Path) -> HostKey:
        """Load the key at `path`, creating it (and its directory, 0700) if it does not exist."""
        try:
            return cls.load(path)
        except KeyFileError as exc:
            if not exc.missing:
                raise
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            _write_new_key(path, pem)
        except OSError as exc:
            raise KeyFileError(path, f"cannot create the key file: {_why(exc)}") from exc
        return cls(key, path)

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte ed25519 public key."""
        return self._key.public_key().public_bytes_raw()

    def fingerprint(self) -> str:
        """First 16 hex digits of the SHA-256 of the raw public key."""
        return fingerprint_of(self.public_key_bytes())

    def sign(self, data: bytes) -> bytes:
        """The 64-byte ed25519 signature of `data`."""
        return self._key.sign(data)

    def __repr__(self) -> str:  # never the private key
        return f"HostKey(fingerprint={self.fingerprint()}, path={self.path})"
