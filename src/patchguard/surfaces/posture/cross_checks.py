"""Findings that need several records: a setting excused by another, or by lockdown."""

from __future__ import annotations

from patchguard.findings import Disposition, Finding, Severity
from patchguard.surfaces.base import finding
from patchguard.surfaces.posture.paths import NAME
from patchguard.surfaces.posture.records import PostureRecords, Setting
from patchguard.surfaces.posture.rules import LOCKED_DOWN


def _lockdown_on(records: PostureRecords) -> bool:
    """Unknown lockdown counts as off: a setting is not excused by what was not read."""
    lockdown = records.lockdown
    return lockdown is not None and lockdown.mode in LOCKED_DOWN


def _setting(records: PostureRecords, name: str) -> Setting | None:
    return next((s for s in records.settings if s.name == name), None)


def module_loading(records: PostureRecords) -> list[Finding]:
    """Loadable modules are normal; unsigned ones without lockdown are the rootkit's door."""
    disabled = _setting(records, "kernel.modules_disabled")
    if disabled is None or disabled.value != "0":
        return []  # modules off, not built, or not read (a gap says so)
    sig = _setting(records, "module.sig_enforce")
    if sig is not None and sig.value == "Y":
        return []
    # Lockdown refuses unsigned modules, but only where signature checking is built.
    if sig is not None and sig.value is not None and _lockdown_on(records):
        return []
    sig_value = None if sig is None else sig.value
    return [
        finding(
            NAME,
            "unsigned-modules-loadable",
            "kernel modules",
            "Root can load kernel modules without a valid signature (modules_disabled=0, "
            "signatures not enforced), the simplest way to run code in the kernel and patch it.",
            {
                "path": disabled.path,
                "value": disabled.value,
                "sig_enforce": sig_value,
                "expected": "modules_disabled=1, or sig_enforce=Y, or lockdown",
            },
            disposition=Disposition.WEAKNESS,
        )
    ]


def kexec(records: PostureRecords) -> list[Finding]:
    setting = _setting(records, "kernel.kexec_load_disabled")
    if setting is None or setting.value != "0" or _lockdown_on(records):
        return []
    return [
        finding(
            NAME,
            "kexec-load-allowed",
            "sysctl kernel.kexec_load_disabled",
            "kexec_load_disabled is 0 and lockdown is off: root can boot into another, "
            "unsigned kernel without going through firmware or the boot loader.",
            {"path": setting.path, "value": "0", "expected": "1, or lockdown"},
            severity=Severity.LOW,
            disposition=Disposition.WEAKNESS,
        )
    ]
