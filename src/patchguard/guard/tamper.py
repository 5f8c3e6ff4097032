"""What the guard remembers from its start so that blinding it shows: the baseline it was
given (by digest), and which surfaces it could read.

A baseline re-created while the guard runs verifies as well as the old one when the attacker
holds the host key; what gives it away is that it is not the file the guard started with. A
surface that could be read and then cannot (a reader unloaded, a file system unmounted, a
lock held) is someone taking an eye away, which is a finding, not a reason to exit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from patchguard.findings import Disposition, Finding, Severity
from patchguard.safe_read import InputError, open_regular
from patchguard.surfaces.base import Status


def baseline_digest(path: Path) -> str:
    """SHA-256 of the baseline file, or a one-line reason it has none (missing, not a file)."""
    try:
        digest = hashlib.sha256()
        with open_regular(path, "baseline") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except InputError as exc:
        return f"unreadable: {exc.reason}"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


@dataclass
class BaselinePin:
    """The baseline's digest when the guard started (or was last reloaded: SIGHUP is how an
    operator says a new baseline is meant)."""

    path: Path
    digest: str

    @classmethod
    def take(cls, path: Path) -> BaselinePin:
        return cls(path, baseline_digest(path))

    def check(self) -> list[Finding]:
        now = baseline_digest(self.path)
        if now == self.digest:
            return []
        return [
            Finding(
                "guard",
                "baseline-replaced",
                Severity.CRITICAL,
                str(self.path),
                "the baseline is not the file the guard started with (a new baseline needs a "
                "reload: systemctl reload patchguard-guard)",
                Disposition.TAMPERING,
                "T1565.001",
                {"path": str(self.path), "pinned": self.digest, "now": now},
            )
        ]


@dataclass
class SurfaceWatch:
    """Surfaces seen readable; one of them unavailable later is a `surface-lost` finding."""

    readable: set[str] = field(default_factory=set)

    def update(self, statuses: Iterable[tuple[str, Status, str]]) -> list[Finding]:
        """`statuses`: (surface, status, why) of one look; the findings of surfaces lost."""
        lost = []
        for name, status, why in statuses:
            if status is not Status.UNAVAILABLE:
                self.readable.add(name)
            elif name in self.readable:
                lost.append(surface_lost(name, why))
        return lost


def surface_lost(name: str, why: str) -> Finding:
    return Finding(
        "guard",
        "surface-lost",
        Severity.HIGH,
        name,
        f"surface {name} could be read when the guard started and cannot now: {why}",
        Disposition.SUSPICIOUS,
        "T1562.001",
        {"surface": name, "reason": why},
    )


# ---------------------------------------------------------------- the guard's own code

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _runtime_requirements(dist: metadata.Distribution) -> list[str]:
    """Names of what `dist` needs to run (requirements that only an extra asks for are not)."""
    names = []
    for requirement in dist.requires or []:
        found = _NAME.match(requirement)
        if found and "extra ==" not in requirement.replace('extra=="', 'extra == "'):
            names.append(found.group())
    return names


def _distributions(root: str) -> list[metadata.Distribution]:
    """`root` and everything it needs to run, transitively, each once."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            seen[key] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_runtime_requirements(seen[key]))
    return list(seen.values())


def installed_files(package: Path) -> list[Path]:
    """Every file the guard's code comes from: its package directory whole (bytecode caches
    included: a swapped .pyc runs as surely as a swapped .py), every file its distribution and
    its runtime dependencies list in their RECORD, and every .pth file of the site directories
    they live in (a .pth runs code at interpreter start)."""
    files = {p for p in package.rglob("*") if p.is_file()}
    for dist in _distributions("patchguard"):
        for listed in dist.files or []:
            files.add(Path(str(dist.locate_file(listed))))
    sites = {p.parent for p in files if p.suffix == ".pth"} | {
        Path(str(d.locate_file(""))) for d in _distributions("patchguard")
    }
    for site in sites:
        files.update(site.glob("*.pth"))
    return sorted(files)


def files_digest(paths: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of each file ("missing" for one that is not there, or cannot be read)."""
    digests = {}
    for path in paths:
        try:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digests[str(path)] = "missing"
    return digests


@dataclass
class CodePin:
    """The guard's code as it was when the guard started: a file changed, added to its
    package, or removed since then is tampering."""

    package: Path
    digests: dict[str, str]

    @classmethod
    def take(cls, package: Path) -> CodePin:
        return cls(package, files_digest(installed_files(package)))

    def changed(self) -> list[str]:
        paths = {Path(p) for p in self.digests} | set(installed_files(self.package))
        now = files_digest(paths)
        return sorted(p for p in now if self.digests.get(p, "new") != now[p])


def ledger_root_changed(ledger: Path, root: str) -> list[Finding]:
    """The ledger's entry 1 against the owner key the config pins: a ledger rebuilt with other
    keys verifies by itself, and only the pin tells it from the real one."""
    from patchguard.policy.ledger import LedgerError, load

    try:
        entries = load(ledger).entries
    except (LedgerError, OSError):
        return []  # missing or not verifying: said by the ledger feed and the scan
    signer = entries[0].actor if entries else "(no entries)"
    if signer == root:
        return []
    return [
        Finding(
            "guard",
            "ledger-root-changed",
            Severity.CRITICAL,
            str(ledger),
            f"the ledger's first entry is signed by {signer}, not by the pinned owner {root}: "
            "the ledger was rebuilt",
            Disposition.TAMPERING,
            "T1565.001",
            {"path": str(ledger), "pinned": root, "signer": signer},
        )
    ]
