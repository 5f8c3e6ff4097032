"""The hook manifest: a product declares, in TOML, every hook it puts into the kernel.

docs/manifest.md documents the schema. A manifest is read strictly: an unknown key, a wrong
type or a missing field is a ManifestError naming the file, the line and the key, because a
manifest becomes the exact description an exception is granted for; nothing is guessed.
The same checks run on the parsed content a ledger request carries (`manifest_from_dict`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from patchguard.kernel.bpf.syscall import PROG_TYPES
from patchguard.policy.toml_lines import decode_error_position, line_of
from patchguard.safe_read import LIMITS, InputError, parse_toml, read_bounded
from patchguard.text import has_control, visible

# What one ledger request may carry, as canonical JSON: every host's guard and every verifier
# replays each request, so a bigger one would slow all of them. The largest real agent
# manifests (hundreds of programs) are tens of KiB.
MAX_REQUEST = 256 * 1024
MAX_MANIFEST = LIMITS["manifest"]  # a manifest lists hooks; a megabyte of it is not a manifest
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")  # kallsyms names: "foo", "foo.isra.0"
_MODULE = re.compile(r"[A-Za-z0-9_-]+\Z")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")
_TAINTS = re.compile(r"[A-Z]+\Z")  # the kernel's taint letters (taint_flags[].c_true)
KPROBE_KINDS = ("kprobe", "kretprobe")
MAX_OFFSET = 1 << 32  # a kprobe offset lies inside one function


class ManifestError(Exception):
    """A malformed manifest; str() is one line: `<file>:<line>: <key>: <what is wrong>`."""

    def __init__(self, source: str, line: int | None, key: str, reason: str) -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")
        self.source, self.line, self.key, self.reason = source, line, key, reason


@dataclass(frozen=True)
class Loader:
    path: str  # absolute path of the executable that loads the programs
    sha256: str = ""  # lowercase hex of its contents; "" when `releases` lists its builds
    # (release, sha256) of each build that is the loader, such as a distribution's package
    # versions: a fleet mid-upgrade runs two, and each is still an exact hash the approver saw.
    releases: tuple[tuple[str, str], ...] = ()

    @property
    def digests(self) -> frozenset[str]:
        """Every sha256 the loader's executable may have."""
        return frozenset([self.sha256] if self.sha256 else [d for _, d in self.releases])


@dataclass(frozen=True)
class DeclaredBpfProgram:
    name: str  # the program name as bpf(2) reports it (at most 15 characters)
    prog_type: str  # as the ebpf surface names it: "tracepoint", "kprobe", "tracing", ...
    attach: tuple[str, ...]  # "tracepoint:sys_enter_kill", "kprobe:do_sys_openat2", "vfs_read"
    helpers: tuple[str, ...]  # kernel helper functions: "bpf_get_current_pid_tgid"
    kfuncs: tuple[str, ...]
    loader: Loader | None = None  # the process that holds it; None: no process may hold it
    pins: tuple[str, ...] = ()  # bpffs paths of the program's and its links' pins, all of them
    # Kept alive by its attachment alone (a tc filter, say): no process holds it, nothing pins
    # it, and `attach` (device, netns, direction, handle) is then what identifies it.
    kept_by_attachment: bool = False


@dataclass(frozen=True)
class DeclaredFtrace:
    function: str  # the traced kernel function
    owner: str  # the callback (ftrace_ops func) that runs on it
    module: str | None = None  # the module the callback lives in


@dataclass(frozen=True)
class DeclaredKprobe:
    symbol: str
    offset: int = 0
    kind: str = "kprobe"
    module: str | None = None


@dataclass(frozen=True)
class DeclaredModule:
    name: str
    signer: str | None = None  # the module signature's signer, as modinfo prints it
    # The taint letters the module itself shows (/sys/module/<name>/taint) that are declared:
    # "OE" for a module built out of tree and not signed with a key the kernel trusts. The
    # kernel's own taint flags with these letters are then the module's, while it alone
    # shows them.
    taints: str = ""


@dataclass(frozen=True)
class DeclaredLivepatch:
    name: str
    functions: tuple[str, ...]  # the kernel functions it replaces


@dataclass(frozen=True)
class Manifest:
    vendor: str
    product: str
    version: str
    contact: str
    justification: str
    bpf_programs: tuple[DeclaredBpfProgram, ...] = ()
    ftrace: tuple[DeclaredFtrace, ...] = ()
    kprobes: tuple[DeclaredKprobe, ...] = ()
    modules: tuple[DeclaredModule, ...] = ()
    livepatches: tuple[DeclaredLivepatch, ...] = ()
    sha256: str = ""  # of the file it was read from; not part of to_dict()

    def to_dict(self) -> dict[str, Any]:
        """The content in the TOML's own shape (what a ledger request carries)."""

        def some(**values: Any) -> dict[str, Any]:
            return {k: v for k, v in values.items() if v is not None}

        return {
            "vendor": self.vendor,
            "product": self.product,
            "version": self.version,
            "contact": self.contact,
            "justification": self.justification,
            "bpf_program": [_program_dict(p) for p in self.bpf_programs],
            "ftrace": [
                some(function=f.function, owner=f.owner, module=f.module) for f in self.ftrace
            ],
            "kprobe": [
                some(symbol=k.symbol, offset=k.offset, kind=k.kind, module=k.module)
                for k in self.kprobes
            ],
            "module": [
                some(name=m.name, signer=m.signer, taints=m.taints or None) for m in self.modules
            ],
            "livepatch": [
                {"name": p.name, "functions": list(p.functions)} for p in self.livepatches
            ],
        }


def _program_dict(p: DeclaredBpfProgram) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name,
        "prog_type": p.prog_type,
        "attach": list(p.attach),
        "helpers": list(p.helpers),
        "kfuncs": list(p.kfuncs),
    }
    if p.loader is not None:
        out["loader"] = _loader_dict(p.loader)
    if p.pins:
        out["pins"] = list(p.pins)
    if p.kept_by_attachment:
        out["kept_by_attachment"] = True
    return out


def _loader_dict(loader: Loader) -> dict[str, Any]:
    if loader.releases:  # a single build keeps the old form: ledgers replay it unchanged
        return {"path": loader.path, "releases": dict(loader.releases)}
    return {"path": loader.path, "sha256": loader.sha256}


class _Reader:
    """Typed reads from the parsed TOML, each failure a ManifestError with its line."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source, self.text = source, text

    def fail(self, key: str, reason: str) -> NoReturn:
        line = line_of(self.text, key) if self.text is not None else None
        raise ManifestError(self.source, line, key, reason)

    def table(self, raw: object, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, "expected a table")
        for name in raw:
            if name not in allowed:
                self.fail(f"{where}.{name}" if where else name, "unknown key")
        return raw

    def string(self, raw: dict[str, Any], name: str, where: str, optional: bool = False) -> Any:
        key = f"{where}.{name}" if where else name
        if name not in raw:
            if optional:
                return None
            self.fail(key, "missing")
        value = raw[name]
        if not isinstance(value, str) or not value.strip():
            self.fail(key, "expected a non-empty string")
        self.printable(key, value, prose=name in _PROSE)
        return value

    def printable(self, key: str, value: str, prose: bool = False) -> None:
        """Refuse control and format characters: these fields name a product on the approver's
        terminal and in the ledger, where a newline could forge a line and an escape sequence
        could rewrite the screen. Prose (the justification) may hold newlines and tabs."""
        if has_control(value.replace("\n", "").replace("\t", "") if prose else value):
            self.fail(key, f"{visible(value[:80])!s} holds control characters")

    def symbol(self, raw: dict[str, Any], name: str, where: str, optional: bool = False) -> Any:
        value = self.string(raw, name, where, optional)
        if value is not None and not _SYMBOL.match(value):
            self.fail(f"{where}.{name}", f"{value!r} is not a kernel symbol name")
        return value

    def strings(
        self, raw: dict[str, Any], name: str, where: str, symbols: bool, default: bool = False
    ) -> tuple[str, ...]:
        key = f"{where}.{name}"
        value = raw.get(name, [] if default else None)
        if value is None:
            self.fail(key, "missing")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, "expected a list of strings")
        seen: set[str] = set()  # a set, not list.count: 20,000 helpers must stay linear
        for item in value:
            if symbols and not _SYMBOL.match(item):
                self.fail(key, f"{item!r} is not a kernel symbol name")
            self.printable(key, item)
            if item in seen:
                self.fail(key, f"{item!r} is listed twice")
            seen.add(item)
        return tuple(value)

    def tables(self, raw: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
        value = raw.get(name, [])
        if not isinstance(value, list):
            self.fail(name, f"expected [[{name}]] tables")
        return [(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _bpf_program(r: _Reader, where: str, raw: object) -> DeclaredBpfProgram:
    allowed = ("name", "prog_type", "attach", "helpers", "kfuncs", "loader", "pins")
    t = r.table(raw, where, (*allowed, "kept_by_attachment"))
    prog_type = r.string(t, "prog_type", where)
    if prog_type not in PROG_TYPES:
        r.fail(f"{where}.prog_type", f"unknown program type {prog_type!r}")
    attach = t.get("attach")
    if isinstance(attach, str):
        attach = [attach]  # one attach point may be written without the list
    if attach == [] and prog_type != "perf_event":
        # perf_event programs alone: the kernel does not say which perf event runs one
        # (BPF_TASK_FD_QUERY refuses them), so scan reports no attach point to declare
        r.fail(f"{where}.attach", "expected at least one attach point")
    kept = _kept_by_attachment(r, where, t)
    if "loader" not in t and "pins" not in t and not kept:
        r.fail(f"{where}.loader", "missing (a table: {path, sha256}), and no pins either")
    return DeclaredBpfProgram(
        name=r.string(t, "name", where),
        prog_type=prog_type,
        attach=r.strings({**t, "attach": attach}, "attach", where, symbols=False),
        helpers=r.strings(t, "helpers", where, symbols=True),
        kfuncs=r.strings(t, "kfuncs", where, symbols=True, default=True),
        loader=_loader(r, where, t) if "loader" in t else None,
        pins=_pins(r, where, t) if "pins" in t else (),
        kept_by_attachment=kept,
    )


def _kept_by_attachment(r: _Reader, where: str, t: dict[str, Any]) -> bool:
    kept = t.get("kept_by_attachment", False)
    if not isinstance(kept, bool):
        r.fail(f"{where}.kept_by_attachment", "expected true or false")
    if kept and ("loader" in t or "pins" in t or not t.get("attach")):
        r.fail(
            f"{where}.kept_by_attachment",
            "a program kept by its attachment alone declares attach, and no loader or pins",
        )
    return kept


def _loader(r: _Reader, where: str, t: dict[str, Any]) -> Loader:
    key = f"{where}.loader"
    loader = r.table(t["loader"], key, ("path", "sha256", "releases"))
    path = r.string(loader, "path", key)
    if not path.startswith("/"):
        r.fail(f"{key}.path", "expected an absolute path")
    if ("sha256" in loader) == ("releases" in loader):
        r.fail(f"{key}.sha256", "expected either sha256 or releases (one build, or several)")
    if "releases" in loader:
        return Loader(path, releases=_releases(r, key, loader["releases"]))
    return Loader(path, _digest(r, f"{key}.sha256", r.string(loader, "sha256", key)))


def _digest(r: _Reader, key: str, digest: object) -> str:
    if not isinstance(digest, str) or not _SHA256.match(digest):
        r.fail(key, "expected 64 hex digits (sha256sum of the loader)")
    return digest.lower()


def _releases(r: _Reader, key: str, raw: object) -> tuple[tuple[str, str], ...]:
    """`{ "<release>" = "<sha256>", ... }`: at least one; a release names one build."""
    if not isinstance(raw, dict):
        r.fail(f"{key}.releases", 'expected a table: { "<release>" = "<sha256>" }')
    releases: dict[str, object] = raw
    if not releases:
        r.fail(f"{key}.releases", "expected at least one release = sha256")
    for release in releases:
        r.printable(f"{key}.releases", release)
        if not release.strip():
            r.fail(f"{key}.releases", "a release name is empty")
    return tuple((name, _digest(r, f"{key}.releases", d)) for name, d in releases.items())


def _pins(r: _Reader, where: str, t: dict[str, Any]) -> tuple[str, ...]:
    """Pin paths as the ebpf surface reports them: absolute and normalized, for the exact
    comparison (no "//", "/./", "/../" or trailing "/")."""
    pins = r.strings(t, "pins", where, symbols=False)
    if not pins:
        r.fail(f"{where}.pins", "expected at least one path (leave pins out if it is not pinned)")
    for path in pins:
        if not _clean_path(path):
            r.fail(f"{where}.pins", f"{path!r} is not an absolute, normalized bpffs path")
    return pins


def _clean_path(path: str) -> bool:
    normal = posixpath.normpath(path) == path and not path.startswith("//")
    return path.startswith("/") and path != "/" and normal and "\0" not in path


def _kprobe(r: _Reader, where: str, raw: object) -> DeclaredKprobe:
    t = r.table(raw, where, ("symbol", "offset", "kind", "module"))
    offset = t.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < MAX_OFFSET:
        r.fail(f"{where}.offset", f"expected a byte offset (0 to {MAX_OFFSET - 1})")
    kind = t.get("kind", "kprobe")
    if kind not in KPROBE_KINDS:
        r.fail(f"{where}.kind", f"expected one of {', '.join(KPROBE_KINDS)}")
    module = r.string(t, "module", where, optional=True)
    if module is not None and not _MODULE.match(module):
        r.fail(f"{where}.module", f"{module!r} is not a module name")
    return DeclaredKprobe(r.symbol(t, "symbol", where), offset, kind, module)


def _module(r: _Reader, where: str, raw: object) -> DeclaredModule:
    t = r.table(raw, where, ("name", "signer", "taints"))
    name = r.string(t, "name", where)
    if not _MODULE.match(name):
        r.fail(f"{where}.name", f"{name!r} is not a module name")
    taints = r.string(t, "taints", where, optional=True) or ""
    if taints and (not _TAINTS.match(taints) or len(set(taints)) != len(taints)):
        r.fail(f"{where}.taints", f'{taints!r} is not a set of taint letters (as in "OE")')
    signer = r.string(t, "signer", where, optional=bool(taints))  # taints stand in for it
    return DeclaredModule(name, signer, "".join(sorted(taints)))


def _ftrace(r: _Reader, where: str, raw: object) -> DeclaredFtrace:
    t = r.table(raw, where, ("function", "owner", "module"))
    module = r.string(t, "module", where, optional=True)
    if module is not None and not _MODULE.match(module):
        r.fail(f"{where}.module", f"{module!r} is not a module name")
    return DeclaredFtrace(r.symbol(t, "function", where), r.string(t, "owner", where), module)


def _livepatch(r: _Reader, where: str, raw: object) -> DeclaredLivepatch:
    t = r.table(raw, where, ("name", "functions"))
    name = r.string(t, "name", where)
    functions = r.strings(t, "functions", where, symbols=True)
    if not functions:
        r.fail(f"{where}.functions", "expected at least one function")
    return DeclaredLivepatch(name, functions)


_TOP = ("vendor", "product", "version", "contact", "justification")
_PROSE = ("justification",)  # free text: newlines and tabs allowed, other controls not
_HOOKS = ("bpf_program", "ftrace", "kprobe", "module", "livepatch")
T = TypeVar("T")


def _each(
    r: _Reader, t: dict[str, Any], name: str, read: Callable[[_Reader, str, object], T]
) -> tuple[T, ...]:
    return tuple(read(r, where, item) for where, item in r.tables(t, name))


def manifest_from_dict(raw: object, source: str, text: str | None = None) -> Manifest:
    """Check parsed manifest content (from TOML, or from a ledger request) and build it.

    `text`, when given, is the TOML the content came from: errors then carry line numbers."""
    r = _Reader(source, text)
    t = r.table(raw, "", _TOP + _HOOKS)
    about = {name: r.string(t, name, "") for name in _TOP}
    manifest = Manifest(
        **about,
        bpf_programs=_each(r, t, "bpf_program", _bpf_program),
        ftrace=_each(r, t, "ftrace", _ftrace),
        kprobes=_each(r, t, "kprobe", _kprobe),
        modules=_each(r, t, "module", _module),
        livepatches=_each(r, t, "livepatch", _livepatch),
    )
    hooks = (manifest.bpf_programs, manifest.ftrace, manifest.kprobes, manifest.modules)
    if not any(hooks) and not manifest.livepatches:
        r.fail("", "declares no hooks (no bpf_program, ftrace, kprobe, module or livepatch)")
    return manifest


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Parse manifest bytes; `source` names the file in errors."""
    try:
        text = data.decode("utf-8")
        raw = parse_toml(text, source)
    except InputError as exc:
        raise ManifestError(source, None, "", exc.reason) from None
    except UnicodeDecodeError as exc:
        raise ManifestError(source, None, "", f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        line, reason = decode_error_position(exc, text)
        raise ManifestError(source, line, "", f"not valid TOML: {reason}") from None
    manifest = manifest_from_dict(raw, source, text)
    return replace(manifest, sha256=hashlib.sha256(data).hexdigest())


def load_manifest(path: Path) -> Manifest:
    """Read (a regular file, at most MAX_MANIFEST bytes) and parse a manifest."""
    try:
        data = read_bounded(path, "manifest")
    except InputError as exc:
        raise ManifestError(str(path), None, "", f"cannot read it: {exc.reason}") from None
    return parse_manifest(data, str(path))


def check_request_size(manifest: Manifest, source: str) -> None:
    """ManifestError if the manifest is too large to be carried by a ledger request."""
    size = len(json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":")))
    if size > MAX_REQUEST:
        raise ManifestError(
            source,
            None,
            "",
            f"{size} bytes as a ledger request, more than the {MAX_REQUEST // 1024} KiB limit "
            "(split the product's hooks, or declare fewer helpers)",
        )
