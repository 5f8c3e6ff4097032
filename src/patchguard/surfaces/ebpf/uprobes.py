"""User-space probe sites: the file a uprobe is on, its build-id, the symbol at the probed
offset (read from the ELF's .symtab and .dynsym with pyelftools), and whether the file handles
secrets (secret_libraries.toml, extended by /etc/patchguard/secret-libraries.toml).

The kernel names a uprobe by file and file offset (BPF perf_event and uprobe_multi links,
BPF_TASK_FD_QUERY, tracefs uprobe_events); every report spells it one way:
`/usr/lib/libpam.so.0+0x56c0 (pam_get_authtok+0x0)`.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from patchguard.findings import Severity

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

SECRETS_FILE = "secret_libraries.toml"
SITE_SECRETS = Path("/etc/patchguard/secret-libraries.toml")
MAX_SECRETS_BYTES = 1 << 20  # a list of globs: anything bigger is not one
MAX_ELF_BYTES = 1 << 30
TECHNIQUES = ("uprobe-credential-theft", "uprobe-tls-intercept")
FUNC_TYPES = ("STT_FUNC", "STT_GNU_IFUNC")


class SecretListError(ValueError):
    """A secret-libraries file that cannot be used; str() is one line naming it."""


@dataclass(frozen=True)
class ProbedSite:
    """Where a user-space probe sits, resolved as far as the file allows."""

    path: str
    offset: int  # file offset, as the kernel keeps it
    build_id: str | None = None
    symbol: str | None = None  # "pam_get_authtok+0x0"
    unresolved: str | None = None  # why the file or its symbols could not be read

    @property
    def function(self) -> str | None:
        return self.symbol.rsplit("+", 1)[0] if self.symbol else None

    @property
    def spelled(self) -> str:
        return spell(self.path, self.offset, self.symbol)


def spell(path: str, offset: int, symbol: str | None = None) -> str:
    """The one spelling of a uprobe target: `/path/lib.so+0x56c0 (symbol+0x0)`."""
    return f"{path}+{offset:#x}" + (f" ({symbol})" if symbol else "")


@dataclass(frozen=True)
class _Elf:
    build_id: str | None
    loads: tuple[tuple[int, int, int], ...]  # PT_LOAD (p_offset, p_filesz, p_vaddr)
    starts: tuple[int, ...]  # function symbols sorted by address
    symbols: tuple[tuple[int, int, str], ...]  # (address, size, name)


def resolve(path: str, offset: int, root: Path = Path("/")) -> ProbedSite:
    """The probed file's build-id and the function at `offset` (a file offset)."""
    # pyelftools only when a uprobe is there to resolve: a scan without one never pays for it
    from elftools.common.exceptions import ELFError
    from elftools.construct.core import ConstructError

    host = root / path.lstrip("/")
    try:
        st = host.stat()
        if st.st_size > MAX_ELF_BYTES:
            return ProbedSite(path, offset, unresolved=f"{st.st_size} bytes: too large to read")
        elf = _read_elf(str(host), st.st_ino, st.st_mtime_ns)
    except (OSError, ELFError, ConstructError, ValueError, LookupError) as exc:
        return ProbedSite(path, offset, unresolved=f"{host}: {exc}")
    return ProbedSite(path, offset, elf.build_id, _symbol_at(elf, offset))


@lru_cache(maxsize=64)
def _read_elf(path: str, _ino: int, _mtime_ns: int) -> _Elf:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = tuple(
            (seg["p_offset"], seg["p_filesz"], seg["p_vaddr"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"
        )
        symbols = sorted(_functions(elf))
        return _Elf(_build_id(elf), loads, tuple(s[0] for s in symbols), tuple(symbols))


def _functions(elf: ELFFile) -> set[tuple[int, int, str]]:
    found: set[tuple[int, int, str]] = set()
    for name in (".symtab", ".dynsym"):
        section = elf.get_section_by_name(name)
        if section is None or not hasattr(section, "iter_symbols"):
            continue
        for sym in section.iter_symbols():
            if sym["st_info"]["type"] in FUNC_TYPES and sym["st_value"] and sym.name:
                found.add((sym["st_value"], sym["st_size"], sym.name.split("@", 1)[0]))
    return found


def _build_id(elf: ELFFile) -> str | None:
    from elftools.elf.sections import NoteSection

    for section in elf.iter_sections():
        if not isinstance(section, NoteSection):
            continue
        for note in section.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return None


def _symbol_at(elf: _Elf, offset: int) -> str | None:
    vaddr = next((v + offset - o for o, size, v in elf.loads if o <= offset < o + size), None)
    if vaddr is None:
        return None
    # the covering symbol with the greatest start (a local label inside a function, an alias)
    index = bisect.bisect_right(elf.starts, vaddr)
    for start, size, name in reversed(elf.symbols[max(0, index - 64) : index]):
        if vaddr < start + max(size, 1):
            return f"{name}+{vaddr - start:#x}"
    return None


# --- what a probe there can read --------------------------------------------------------------


@dataclass(frozen=True)
class SecretEntry:
    name: str
    files: tuple[str, ...]
    functions: tuple[str, ...]  # empty: every function
    reads: str
    technique: str

    def holds_file(self, path: str) -> bool:
        base = PurePosixPath(path).name
        return any(fnmatch.fnmatchcase(base, glob) for glob in self.files)

    def holds_function(self, function: str | None) -> bool:
        """True for a listed function, for any function when none are listed, and for an
        unknown one (a stripped file, or one we could not read): the probe may be on a
        secret, so it is reported as one."""
        if not self.functions or function is None:
            return True
        return any(fnmatch.fnmatchcase(function, glob) for glob in self.functions)


@dataclass(frozen=True)
class SecretHit:
    """A user-space probe on a file that handles secrets (secret_libraries.toml)."""

    library: str  # the list entry's name: "PAM", "OpenSSL/BoringSSL/LibreSSL", ...
    reads: str  # what a probe there can read
    technique: str  # uprobe-credential-theft or uprobe-tls-intercept
    on_secret_function: bool  # the probed function is a listed one (or unknown)

    @property
    def severity(self) -> Severity:
        return Severity.HIGH if self.on_secret_function else Severity.MEDIUM

    @property
    def attack_id(self) -> str:
        return "T1056" if self.technique == "uprobe-credential-theft" else "T1040"

    def summary(self, kind: str, site: ProbedSite) -> str:
        """`a uprobe on /lib/libpam.so.0+0x56c0 (pam_get_authtok+0x0) (PAM): it can read ...`"""
        where = "" if self.on_secret_function else " (at a function not known to carry them)"
        return f"a {kind} on {site.spelled} ({self.library}){where}: it can read {self.reads}"


def secret_at(site: ProbedSite, entries: tuple[SecretEntry, ...]) -> SecretHit | None:
    """The first entry naming the probed file; whether the probed function is a listed one."""
    for e in entries:
        if e.holds_file(site.path):
            return SecretHit(e.name, e.reads, e.technique, e.holds_function(site.function))
    return None


def parse_secrets(text: str, source: str) -> tuple[SecretEntry, ...]:
    import tomllib  # only where a uprobe is there to judge: not with every scan's imports

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SecretListError(f"{source}: not TOML: {exc}") from None
    items = doc.get("secret", [])
    if not isinstance(items, list):
        raise SecretListError(f"{source}: `secret` must be an array of tables ([[secret]])")
    return tuple(_entry(item, f"{source}: secret #{n}") for n, item in enumerate(items, 1))


def _entry(item: object, where: str) -> SecretEntry:
    if not isinstance(item, dict):
        raise SecretListError(f"{where}: not a table")
    name, reads = _text(item, "name", where), _text(item, "reads", where)
    technique = _text(item, "technique", where)
    if technique not in TECHNIQUES:
        raise SecretListError(f"{where}: technique must be one of {', '.join(TECHNIQUES)}")
    files = _globs(item, "files", where)
    if not files:
        raise SecretListError(f"{where}: `files` names no file")
    return SecretEntry(name, files, _globs(item, "functions", where), reads, technique)


def _text(item: dict[str, object], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SecretListError(f"{where}: `{key}` must be a non-empty string")
    return value


def _globs(item: dict[str, object], key: str, where: str) -> tuple[str, ...]:
    value = item.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SecretListError(f"{where}: `{key}` must be a list of non-empty strings")
    return tuple(str(v) for v in value)


def shipped_secrets() -> tuple[SecretEntry, ...]:
    from importlib import resources

    text = resources.files(__package__ or "patchguard.surfaces.ebpf").joinpath(SECRETS_FILE)
    return parse_secrets(text.read_text(), SECRETS_FILE)


def load_secrets(site_file: Path = SITE_SECRETS) -> tuple[SecretEntry, ...]:
    """The site's entries first (they may narrow or widen a shipped one), then the shipped."""
    return _site_secrets(site_file) + shipped_secrets()


def _site_secrets(path: Path) -> tuple[SecretEntry, ...]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SECRETS_BYTES + 1)
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise SecretListError(f"{path}: {os.strerror(exc.errno or 0)}") from None
    if len(raw) > MAX_SECRETS_BYTES:
        raise SecretListError(f"{path}: larger than {MAX_SECRETS_BYTES} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise SecretListError(f"{path}: not UTF-8 text") from None
    return parse_secrets(text, str(path))
