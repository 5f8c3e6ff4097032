"""Security posture: the settings that decide how hard it is to patch the running kernel.

Nothing here proves tampering. A weak setting (lockdown off, unsigned modules allowed, KASLR
not in effect, kernel pointers shown to users) opens a door that rootkits and exploits use,
so each one becomes a `weakness` finding that says what was read and why it matters.

Sources: securityfs (lockdown, LSMs), procfs (taint, cmdline, sysctls, cpuinfo, kallsyms),
sysfs (CPU vulnerabilities, module parameters) and efivarfs (Secure Boot). Every parser is a
pure function over text so it can be tested on captured files.

Modules: paths (where each fact is read), records (what is recorded), parsers (text to
records), rules and boot_params (what is weak, and how much), collect (reading a Kernel),
assess, cross_checks and weakness (findings), surface (PostureSurface).
"""

from __future__ import annotations

from patchguard.kernel.kallsyms import X86_64_DEFAULT_STEXT
from patchguard.surfaces.posture.assess import assess_records
from patchguard.surfaces.posture.boot_params import (
    BOOT_PARAMS,
    ParamRule,
)
from patchguard.surfaces.posture.parsers import (
    TAINT_BITS,
    decode_taint,
    find_stext,
    lockdown_modes,
    parse_cmdline,
    parse_cpu_flags,
    parse_lockdown,
    parse_lsm,
    parse_secure_boot,
    parse_setting,
    parse_taint,
)
from patchguard.surfaces.posture.paths import (
    ARCH,
    CMDLINE,
    CPUINFO,
    EFI,
    KALLSYMS,
    LOCKDOWN,
    LSM,
    NAME,
    PROC_MODULES,
    SECURE_BOOT_VAR,
    SIG_ENFORCE,
    TAINTED,
    VULNERABILITIES,
)
from patchguard.surfaces.posture.records import (
    ActiveLsms,
    BootParam,
    Cmdline,
    CpuProtection,
    CpuVulnerability,
    Kaslr,
    Lockdown,
    MemoryTaintValue,
    ModuleTaint,
    PostureRecords,
    SecureBoot,
    Setting,
    Taint,
    TaintFlag,
)
from patchguard.surfaces.posture.rules import (
    CPU_PROTECTIONS,
    LOCKED_DOWN,
    MODULE_TAINTS,
    SYSCTL_RULES,
    SYSCTLS,
    TAINT_FINDINGS,
    WITHOUT_CPU_PROTECTION,
    SysctlRule,
)
from patchguard.surfaces.posture.surface import PostureSurface

__all__ = [
    "ARCH",
    "BOOT_PARAMS",
    "CMDLINE",
    "CPUINFO",
    "CPU_PROTECTIONS",
    "EFI",
    "KALLSYMS",
    "LOCKDOWN",
    "LOCKED_DOWN",
    "LSM",
    "MODULE_TAINTS",
    "NAME",
    "PROC_MODULES",
    "SECURE_BOOT_VAR",
    "SIG_ENFORCE",
    "SYSCTLS",
    "SYSCTL_RULES",
    "TAINTED",
    "TAINT_BITS",
    "TAINT_FINDINGS",
    "VULNERABILITIES",
    "WITHOUT_CPU_PROTECTION",
    "X86_64_DEFAULT_STEXT",
    "ActiveLsms",
    "BootParam",
    "Cmdline",
    "CpuProtection",
    "CpuVulnerability",
    "Kaslr",
    "Lockdown",
    "MemoryTaintValue",
    "ModuleTaint",
    "ParamRule",
    "PostureRecords",
    "PostureSurface",
    "SecureBoot",
    "Setting",
    "SysctlRule",
    "Taint",
    "TaintFlag",
    "assess_records",
    "decode_taint",
    "find_stext",
    "lockdown_modes",
    "parse_cmdline",
    "parse_cpu_flags",
    "parse_lockdown",
    "parse_lsm",
    "parse_secure_boot",
    "parse_setting",
    "parse_taint",
]
