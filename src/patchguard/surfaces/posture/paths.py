"""Where each posture fact is read, and the name findings carry."""

from __future__ import annotations

NAME = "posture"

LOCKDOWN = "/sys/kernel/security/lockdown"
LSM = "/sys/kernel/security/lsm"
TAINTED = "/proc/sys/kernel/tainted"
CMDLINE = "/proc/cmdline"
CPUINFO = "/proc/cpuinfo"
VULNERABILITIES = "/sys/devices/system/cpu/vulnerabilities"
KALLSYMS = "/proc/kallsyms"
ARCH = "/proc/sys/kernel/arch"
EFI = "/sys/firmware/efi"
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e39890e1e5fc"
SIG_ENFORCE = "/sys/module/module/parameters/sig_enforce"
PROC_MODULES = "/proc/modules"
