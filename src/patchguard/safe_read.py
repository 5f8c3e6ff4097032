"""Reading files that someone else wrote: regular files only, never more than a documented
size, parsed with a bounded depth.

Every user-supplied file patchguard reads (baselines, manifests, guard configs and their
signatures, ledger exports, keys) goes through `open_regular` or `read_bounded`. The file is
opened with O_NONBLOCK, so a FIFO does not hang the open, then fstat'ed: anything that is not
a regular file (a FIFO, a device such as a symlink to /dev/zero, a directory, a socket) is
refused before a byte is read. A file larger than its kind's limit is refused by its size, and
the read stops one byte past the limit in case it grows meanwhile. Parsed documents are
refused when nested deeper than MAX_DEPTH, checked without recursion; a parser's own
RecursionError on deeper input is the same refusal.

Size limits, per kind (docs/limits.md repeats them):
    manifest        1 MiB     a manifest lists hooks; a megabyte of it is not a manifest
    config          1 MiB     the guard's TOML config
    signature       64 KiB    a config's .sig (JSON, four short fields)
    key             64 KiB    a PEM private key is under 200 bytes
    ledger          1 GiB     the SQLite ledger, ~2 KiB per entry (checked, then SQLite reads)
    export          256 MiB   a published ledger (JSON), ~2 KiB per entry: ~100,000 entries
    baseline        4 GiB     a signed zip of kernel text; ~20 MiB for a typical kernel
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import IO, Any

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LIMITS = {
    "manifest": 1 * MiB,
    "config": 1 * MiB,
    "signature": 64 * KiB,
    "key": 64 * KiB,
    "ledger": 1 * GiB,
    "export": 256 * MiB,
    "baseline": 4 * GiB,
}
MAX_DEPTH = 32  # no patchguard document nests deeper than 6; 32 leaves room, not recursion
_READ_CHUNK = 1 * MiB


class InputError(Exception):
    """A file that cannot be used as input; str() is one line, `<path>: <what is wrong>`."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def size_text(limit: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if limit >= unit and limit % unit == 0:
            return f"{limit // unit} {name}"
    return f"{limit} bytes"


def os_reason(exc: OSError) -> str:
    """'permission denied (EACCES)': strerror and errno name, lower case, one line."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = (exc.strerror or str(exc)).lower()
    return f"{text} ({name})" if name else text


def _file_type(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _open_fd(path: Path, kind: str) -> tuple[int, os.stat_result]:
    """An fd on `path` that is a regular file within the limit of `kind`, and its fstat."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError(path, os_reason(exc)) from None
    try:
        st = os.fstat(fd)  # the file actually opened, not what the name points to later
        if not stat.S_ISREG(st.st_mode):
            raise InputError(path, f"{_file_type(st.st_mode)}, not a regular file")
        if st.st_size > LIMITS[kind]:
            raise InputError(path, f"larger than {size_text(LIMITS[kind])}: not a {kind} file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def check_regular(path: Path, kind: str) -> None:
    """InputError unless `path` is a regular file within the limit of `kind` (for a reader
    that opens the file itself, like SQLite)."""
    fd, _st = _open_fd(path, kind)
    os.close(fd)


def open_regular(path: Path, kind: str) -> IO[bytes]:
    """A binary file object on `path`, checked as `read_bounded` checks it (for readers that
    seek, like zipfile)."""
    fd, _st = _open_fd(path, kind)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_up_to(fd: int, limit: int) -> bytes:
    """What `fd` holds, up to limit + 1 bytes (more than `limit`: too big, the rest unread),
    _READ_CHUNK a read: never a buffer of the whole limit at once."""
    chunks, size = list[bytes](), 0
    while size <= limit and (chunk := os.read(fd, min(_READ_CHUNK, limit + 1 - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_bounded(path: Path, kind: str) -> bytes:
    """The bytes of `path`: a regular file of at most LIMITS[kind] bytes (InputError if not)."""
    fd, _st = _open_fd(path, kind)
    limit = LIMITS[kind]
    try:
        data = read_up_to(fd, limit)
    except OSError as exc:
        raise InputError(path, os_reason(exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(path, f"larger than {size_text(limit)}: not a {kind} file")
    return data


def depth(value: object) -> int:
    """How deeply lists and dicts nest in `value` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level + 1)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _too_deep(source: str) -> InputError:
    return InputError(source, f"nested deeper than {MAX_DEPTH} levels")


def parse_json(data: bytes | str, source: str) -> Any:
    """json.loads with a depth limit; InputError (naming `source`) for anything it refuses."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise _too_deep(source) from None
    except UnicodeDecodeError as exc:
        raise InputError(source, f"not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:
        raise InputError(source, f"not valid JSON: {exc}") from None
    if depth(value) > MAX_DEPTH:
        raise _too_deep(source)
    return value


# TOML's structure outside strings and comments: strings and comments are skipped whole, the
# rest is looked at one bracket, dot or separator at a time.
_TOML_TOKENS = re.compile(
    # every string form matches even unterminated (to the end of its line or of the text), so
    # no quote is scanned twice: the pass stays linear on hostile text
    r'"""(?:[^"\\]|\\.|"(?!""))*(?:"""|\Z)|\'\'\'.*?(?:\'\'\'|\Z)'
    r'|"(?:[^"\\\n]|\\.)*"?|\'[^\'\n]*\'?|#[^\n]*'
    r"|[\[{]|[\]}]|\.|[=,\n]",
    re.DOTALL,
)


def toml_nesting(text: str) -> int:
    """How deeply `text` nests, in one linear pass before tomllib sees it: brackets and braces
    open, and the dots of one dotted key (`a.b.c = 1` is three tables deep). tomllib takes
    time quadratic in the parts of a dotted key, and recurses once per bracket."""
    deepest = brackets = dots = 0
    for match in _TOML_TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            brackets, dots = brackets + 1, 0
        elif token in ("]", "}"):
            brackets, dots = max(0, brackets - 1), 0
        elif token == ".":
            dots += 1
        elif token in ("=", ",", "\n"):
            dots = 0
        deepest = max(deepest, brackets, dots)
        if deepest > MAX_DEPTH:  # enough to refuse: the rest need not be looked at
            break
    return deepest


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """tomllib.loads with a depth limit (tomllib has none), checked before parsing in linear
    time. TOMLDecodeError passes through, so a caller can place it on a line; deep nesting is
    an InputError."""
    import tomllib  # here: `check` reads no TOML, and this module is on its path

    if toml_nesting(text) > MAX_DEPTH:
        raise _too_deep(source)
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise _too_deep(source) from None
    if depth(value) > MAX_DEPTH:
        raise _too_deep(source)
    return value
