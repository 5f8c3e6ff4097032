"""Module taint letters and what each means; the states of a module coming or going."""

from __future__ import annotations

from typing import TypeVar

from patchguard.findings import Severity

# Module taint letters (taint_flags[] entries with .module set, kernel/panic.c).
MODULE_TAINTS: dict[str, tuple[str, Severity, str]] = {
    "P": ("proprietary-module", Severity.LOW, "proprietary (non-GPL) licence"),
    "O": ("out-of-tree-module", Severity.MEDIUM, "built outside the kernel tree"),
    "E": ("unsigned-module", Severity.MEDIUM, "loaded without a valid signature"),
    "F": ("forced-module-load", Severity.HIGH, "force-loaded past version checks"),
    "C": ("staging-module", Severity.INFO, "a staging (unfinished) driver"),
    "K": ("livepatch-module", Severity.INFO, "a live patch of the kernel"),
    "X": ("auxiliary-taint-module", Severity.INFO, "marked by the distribution (auxiliary)"),
    "T": ("randstruct-module", Severity.INFO, "built with the struct randomization plugin"),
    "N": ("test-module", Severity.INFO, "an in-kernel test"),
}
TRANSIENT_STATES = frozenset({"Loading", "Unloading", "coming", "going"})

T = TypeVar("T")
