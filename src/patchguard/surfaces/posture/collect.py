"""Reading the posture files from a Kernel: a record for each fact, a gap for each miss."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, TypeVar

from patchguard.findings import Gap
from patchguard.kernel.errors import KernelAccessError, is_enoent, oserror_reason
from patchguard.kernel.kallsyms import X86_64_DEFAULT_STEXT
from patchguard.kernel.mounts import ensure_mounted
from patchguard.surfaces.posture import taint_truth
from patchguard.surfaces.posture.parsers import (
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
from patchguard.surfaces.posture.rules import CPU_PROTECTIONS, SYSCTLS
from patchguard.surfaces.reading import Reading

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

T = TypeVar("T")


def _collect_security(r: Reading) -> None:
    reason = ensure_mounted("securityfs", r.kernel.root)
    if reason is not None:
        r.gap("lockdown mode", reason)
        r.gap("active LSMs", reason)
        return
    lsms = r.parsed("active LSMs", LSM, parse_lsm)
    if lsms is not None:
        r.records.append(ActiveLsms(lsms))
    try:
        text = r.kernel.read_text(LOCKDOWN)
    except KernelAccessError as exc:
        # No lockdown file and no lockdown in the LSM list: the LSM is simply not running.
        if is_enoent(exc) and lsms is not None and "lockdown" not in lsms:
            r.records.append(Lockdown(None))
        else:
            r.gap("lockdown mode", str(exc))
        return
    try:
        r.records.append(Lockdown(parse_lockdown(text), lockdown_modes(text)))
    except ValueError as exc:
        r.gap("lockdown mode", f"{LOCKDOWN}: unexpected content: {exc}")


def _collect_taint(r: Reading) -> None:
    value = r.parsed("taint", TAINTED, parse_taint)
    if value is not None:
        r.records.append(Taint(value, tuple(decode_taint(value))))


def _collect_setting(r: Reading, name: str, path: str, absent: str) -> None:
    try:
        text = r.kernel.read_text(path)
    except KernelAccessError as exc:
        # A missing file under a /proc/sys (or /sys/module) that exists is a setting this
        # kernel does not have; a missing tree is a capture that left it out.
        top = "/".join(path.split("/")[:3])
        if is_enoent(exc) and r.kernel.path(top).is_dir():
            r.records.append(Setting(name, path, None, absent))
        else:
            r.gap(f"setting {name}", str(exc))
        return
    try:
        value = parse_setting(text)
        if path.startswith("/proc/sys/"):
            int(value)
    except ValueError as exc:
        r.gap(f"setting {name}", f"{path}: unexpected content: {exc}")
        return
    r.records.append(Setting(name, path, value))


def _collect_settings(r: Reading) -> None:
    modules_built = r.kernel.path(PROC_MODULES).exists()
    no_modules = (
        "not present: the kernel is built without loadable modules (CONFIG_MODULES), so no "
        "module can be loaded at all"
    )
    for rule in SYSCTLS:
        absent = rule.absent
        if rule.name == "kernel.modules_disabled" and not modules_built:
            absent = no_modules
        _collect_setting(r, rule.name, rule.path, absent)
    if modules_built:
        absent = "not present: module signature checking is not built (CONFIG_MODULE_SIG)"
    else:
        absent = no_modules
    _collect_setting(r, "module.sig_enforce", SIG_ENFORCE, absent)


def _collect_secure_boot(r: Reading) -> None:
    if not r.kernel.path(EFI).is_dir():
        if r.kernel.path("/sys/firmware").is_dir():
            r.records.append(SecureBoot(False, None, f"not an EFI boot (no {EFI})"))
        else:
            r.gap("Secure Boot", "/sys/firmware not present (sysfs not mounted or not captured)")
        return
    efivars = r.kernel.path(EFI + "/efivars")
    try:
        data = r.kernel.path(SECURE_BOOT_VAR).read_bytes()
    except OSError as exc:
        if exc.errno == errno.ENOENT and efivars.is_dir() and any(efivars.iterdir()):
            r.records.append(SecureBoot(True, None, "firmware has no SecureBoot variable"))
        else:
            r.gap("Secure Boot", f"{SECURE_BOOT_VAR}: {oserror_reason(exc)}")
        return
    try:
        enabled = parse_secure_boot(data)
    except ValueError as exc:
        r.gap("Secure Boot", f"{SECURE_BOOT_VAR}: unexpected content: {exc}")
        return
    r.records.append(SecureBoot(True, enabled, "SecureBoot variable is " + str(int(enabled))))


def _collect_cpu(r: Reading) -> None:
    flags = r.parsed("CPU protections", CPUINFO, parse_cpu_flags)
    if flags is not None:
        r.records.extend(CpuProtection(f, f in flags, why) for f, why in CPU_PROTECTIONS.items())
    try:
        names = sorted(p.name for p in r.kernel.path(VULNERABILITIES).iterdir())
    except OSError as exc:
        r.gap("CPU vulnerabilities", f"{VULNERABILITIES}: {oserror_reason(exc)}")
        return
    for name in names:
        text = r.text(f"CPU vulnerability {name}", f"{VULNERABILITIES}/{name}")
        if text is not None:
            r.records.append(CpuVulnerability(name, text.strip()))


def _collect_kaslr(r: Reading, cmdline: Cmdline | None) -> None:
    # Stream kallsyms up to _stext (the second line on 6.x) rather than read 5 MB of it.
    try:
        with r.kernel.path(KALLSYMS).open(errors="replace") as f:
            stext = find_stext(f)
    except OSError as exc:
        r.gap("KASLR", f"{KALLSYMS}: {oserror_reason(exc)}")
        return
    except ValueError as exc:
        r.gap("KASLR", f"{KALLSYMS}: unexpected content: {exc}")
        return
    arch_text = r.text("KASLR", ARCH)
    if arch_text is None:
        return
    arch = arch_text.strip()
    if cmdline is not None and cmdline.has("nokaslr"):
        r.records.append(Kaslr(stext, False, "nokaslr on the kernel command line"))
        return
    undetermined = None
    if stext is None:
        undetermined = f"no _stext in {KALLSYMS}"
    elif stext == 0:
        undetermined = f"{KALLSYMS} shows zero addresses (kptr_restrict, or no CAP_SYSLOG)"
    elif arch != "x86_64":
        undetermined = f"the default kernel address is known here only for x86_64, not {arch}"
    if undetermined is not None:
        r.records.append(Kaslr(None if stext == 0 else stext, None, undetermined))
        r.gap("KASLR", "could not be determined: " + undetermined)
        return
    assert stext is not None
    # With KASLR the kernel can still pick the lowest slot, the default, about once in 500
    # boots; a scan that sees it again on the next boot has its answer.
    at_default = stext == X86_64_DEFAULT_STEXT
    detail = "_stext at the default address" if at_default else "_stext moved from the default"
    r.records.append(Kaslr(stext, not at_default, detail))


def read_posture(kernel: Kernel) -> tuple[PostureRecords, list[Gap]]:
    """Every posture record that could be read, and a gap for each one that could not."""
    r = Reading(NAME, kernel)
    _collect_security(r)
    _collect_taint(r)
    taint_truth.collect(r)
    cmdline = r.parsed("kernel command line", CMDLINE, parse_cmdline)
    if cmdline is not None:
        r.records.append(cmdline)
    _collect_settings(r)
    _collect_secure_boot(r)
    _collect_cpu(r)
    _collect_kaslr(r, cmdline)
    return PostureRecords.of(r.records), r.gaps
