"""The import layers of shared/DESIGN.md, checked over the source: each package imports only
from its own layer or below, lazily (inside a function) or not. EXCEPTIONS lists the imports
that break the rule today; it may only shrink, and an entry that no longer occurs fails too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "patchguard"
LAYERS = (
    ("patchguard", "patchguard.atomic", "patchguard.kernel"),
    ("patchguard.findings", "patchguard.techniques", "patchguard.signing", "patchguard.x86"),
    ("patchguard.surfaces",),
    ("patchguard.scan", "patchguard.report", "patchguard.sealed_report", "patchguard.integrity"),
    ("patchguard.policy",),
    ("patchguard.guard", "patchguard.fleet", "patchguard.server"),
    ("patchguard.cli", "patchguard.report_cli", "patchguard.guard_cli"),
)
EXCEPTIONS: set[tuple[str, str]] = set()  # (importer, imported) pairs allowed for now


def layer(module: str) -> int:
    """The layer of the longest prefix that names the module's package."""
    best, found = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found >= 0, f"{module} is in no layer: add it to LAYERS"
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for path in SRC.rglob("*.py"):
        importer = module_name(path)
        for imported in imports(path):
            if imported.startswith("patchguard") and layer(imported) > layer(importer):
                found.add((importer, imported))
    return found


def test_every_import_goes_down_the_layers() -> None:
    assert upward_imports() - EXCEPTIONS == set()


def test_the_exceptions_list_only_shrinks() -> None:
    assert EXCEPTIONS - upward_imports() == set(), "remove the entries that no longer occur"


def test_layer_is_the_longest_prefix() -> None:
    assert layer("patchguard.kernel.bpf.syscall") == 0
    assert layer("patchguard.integrity.check") == 3
    assert layer("patchguard.cli") == 6
