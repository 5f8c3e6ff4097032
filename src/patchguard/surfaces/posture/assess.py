"""Findings from posture records: each weak setting, with what was read and why it matters."""

from __future__ import annotations

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.surfaces.base import finding
from patchguard.surfaces.posture.boot_params import BOOT_PARAMS
from patchguard.surfaces.posture.cross_checks import kexec, module_loading
from patchguard.surfaces.posture.paths import (
    CMDLINE,
    CPUINFO,
    EFI,
    KALLSYMS,
    LOCKDOWN,
    NAME,
    SECURE_BOOT_VAR,
    TAINTED,
    VULNERABILITIES,
)
from patchguard.surfaces.posture.records import (
    Cmdline,
    CpuProtection,
    CpuVulnerability,
    Kaslr,
    Lockdown,
    PostureRecords,
    SecureBoot,
    Setting,
    Taint,
)
from patchguard.surfaces.posture.rules import (
    MODULE_TAINTS,
    SYSCTL_RULES,
    TAINT_FINDINGS,
    WITHOUT_CPU_PROTECTION,
)
from patchguard.surfaces.posture.taint_truth import cross_check


def _assess_lockdown(lockdown: Lockdown) -> list[Finding]:
    why = (
        "root can change the running kernel: write kernel memory through /dev/mem and MSRs, "
        "load unsigned modules, kexec an unsigned kernel and override ACPI tables"
    )
    if lockdown.mode is None:
        return [
            finding(
                NAME,
                "lockdown-missing",
                "lockdown",
                f"The lockdown LSM is not active, so {why}.",
                {"path": LOCKDOWN, "value": None, "expected": "integrity or confidentiality"},
                disposition=Disposition.WEAKNESS,
            )
        ]
    if lockdown.mode == "none":
        return [
            finding(
                NAME,
                "lockdown-off",
                "lockdown",
                f"Kernel lockdown is off (none), so {why}.",
                {"path": LOCKDOWN, "value": "none", "expected": "integrity or confidentiality"},
                disposition=Disposition.WEAKNESS,
            )
        ]
    return []


def _assess_taint(taint: Taint) -> list[Finding]:
    findings = []
    for flag in taint.flags:
        if flag.letter not in TAINT_FINDINGS:
            continue
        severity, technique, why = TAINT_FINDINGS[flag.letter]
        findings.append(
            finding(
                NAME,
                "taint-" + technique,
                f"taint {flag.letter}",
                f"The kernel is tainted {flag.letter} ({flag.meaning}): {why}.",
                {
                    "path": TAINTED,
                    "value": str(taint.value),
                    "bit": flag.bit,
                    "letter": flag.letter,
                    "expected": f"bit {flag.bit} clear",
                },
                severity=severity,
                disposition=Disposition.WEAKNESS,
                attack_id="T1547.006" if flag.letter in MODULE_TAINTS else None,
            )
        )
    return findings


def _assess_cmdline(cmdline: Cmdline) -> list[Finding]:
    findings = []
    for rule in BOOT_PARAMS:
        if not cmdline.has(rule.name):
            continue
        value = cmdline.last(rule.name)
        severity = rule.weak(value)
        if severity is None:
            continue
        shown = rule.name if value is None else f"{rule.name}={value}"
        findings.append(
            finding(
                NAME,
                "weakening-boot-param",
                f"boot parameter {shown}",
                f"The kernel was booted with {shown}, which {rule.why}.",
                {"path": CMDLINE, "param": rule.name, "value": value, "expected": rule.expected},
                severity=severity,
                disposition=Disposition.WEAKNESS,
            )
        )
    return findings


def _assess_setting(setting: Setting) -> list[Finding]:
    rule = SYSCTL_RULES.get(setting.name)
    if rule is None or setting.value is None:
        return []
    try:
        severity = rule.judge(int(setting.value))
    except ValueError:
        return []
    if severity is None:
        return []
    return [
        finding(
            NAME,
            rule.technique,
            f"sysctl {setting.name}",
            f"{setting.name} is {setting.value}: {rule.why}.",
            {"path": setting.path, "value": setting.value, "expected": rule.expected},
            severity=severity,
            disposition=Disposition.WEAKNESS,
            attack_id=None,
        )
    ]


def _assess_secure_boot(sb: SecureBoot) -> list[Finding]:
    evidence: Evidence = {"path": SECURE_BOOT_VAR, "value": sb.detail, "expected": "1"}
    if not sb.efi:
        return [
            finding(
                NAME,
                "boot-unverified",
                "Secure Boot",
                "Not an EFI boot, so there is no Secure Boot state to read: nothing in firmware "
                "is known to check the kernel image before it runs.",
                {"path": EFI, "value": sb.detail, "expected": "an EFI boot with Secure Boot"},
                disposition=Disposition.WEAKNESS,
            )
        ]
    if sb.enabled is None:
        return [
            finding(
                NAME,
                "secure-boot-unsupported",
                "Secure Boot",
                "The firmware has no SecureBoot variable, so it does not verify the kernel "
                "image it boots.",
                evidence,
                disposition=Disposition.WEAKNESS,
            )
        ]
    if not sb.enabled:
        return [
            finding(
                NAME,
                "secure-boot-off",
                "Secure Boot",
                "Secure Boot is off: the firmware boots any kernel image, so a modified kernel "
                "or boot loader on disk is not stopped.",
                evidence,
                disposition=Disposition.WEAKNESS,
            )
        ]
    return []


def _assess_cpu(protection: CpuProtection) -> list[Finding]:
    without = WITHOUT_CPU_PROTECTION.get(protection.flag)
    if protection.present or without is None:
        return []
    return [
        finding(
            NAME,
            f"no-{protection.flag}",
            f"cpu {protection.flag}",
            f"The CPUs do not report {protection.flag}, so it is not in force and {without}.",
            {"path": CPUINFO, "value": "absent", "flag": protection.flag, "expected": "present"},
            severity=Severity.MEDIUM,
            disposition=Disposition.WEAKNESS,
            attack_id=None,
        )
    ]


def _assess_vulnerability(vuln: CpuVulnerability) -> list[Finding]:
    if not vuln.status.startswith("Vulnerable"):
        return []
    # Meltdown reads kernel memory directly; the others leak through narrower channels.
    severity = Severity.MEDIUM if vuln.name == "meltdown" else Severity.LOW
    return [
        finding(
            NAME,
            "cpu-vulnerable",
            f"cpu vulnerability {vuln.name}",
            f"The kernel reports the CPUs vulnerable to {vuln.name} ({vuln.status}), so user "
            "space may be able to read memory it should not through a side channel.",
            {
                "path": f"{VULNERABILITIES}/{vuln.name}",
                "value": vuln.status,
                "expected": "Not affected, or Mitigation: ...",
            },
            severity=severity,
            disposition=Disposition.WEAKNESS,
        )
    ]


def _assess_kaslr(kaslr: Kaslr) -> list[Finding]:
    if kaslr.in_effect is not False:
        return []
    return [
        finding(
            NAME,
            "kaslr-off",
            "KASLR",
            f"KASLR is not in effect ({kaslr.detail}): kernel addresses are those of the "
            "published vmlinux, so an exploit needs no address leak.",
            {
                "path": KALLSYMS,
                "value": None if kaslr.stext is None else f"{kaslr.stext:#x}",
                "expected": f"_stext != {kaslr.default:#x}",
            },
            disposition=Disposition.WEAKNESS,
        )
    ]


def assess_records(records: PostureRecords) -> list[Finding]:
    """Findings from posture records alone; cross-checks (modules, kexec) need several."""
    r = records
    found = [f for s in r.settings for f in _assess_setting(s)]
    found += [f for p in r.cpu_protections for f in _assess_cpu(p)]
    found += [f for v in r.cpu_vulnerabilities for f in _assess_vulnerability(v)]
    found += _assess_lockdown(r.lockdown) if r.lockdown else []
    found += _assess_taint(r.taint) if r.taint else []
    found += _assess_cmdline(r.cmdline) if r.cmdline else []
    found += _assess_secure_boot(r.secure_boot) if r.secure_boot else []
    found += _assess_kaslr(r.kaslr) if r.kaslr else []
    return found + module_loading(r) + kexec(r) + cross_check(r)
