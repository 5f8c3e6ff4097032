"""Kernel command-line parameters that weaken the kernel, and how much."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from patchguard.findings import Severity
from patchguard.surfaces.posture.parsers import parse_lsm
from patchguard.surfaces.posture.rules import CPU_PROTECTIONS


@dataclass(frozen=True)
class ParamRule:
    name: str
    weak: Callable[[str | None], Severity | None]
    expected: str
    why: str


_OFF = frozenset({"0", "n", "no", "off", "false"})


def _flag(severity: Severity) -> Callable[[str | None], Severity | None]:
    return lambda value: severity


def _when(values: Iterable[str], severity: Severity) -> Callable[[str | None], Severity | None]:
    bad = frozenset(values)
    return lambda value: severity if value is not None and value.lower() in bad else None


def _mitigations(value: str | None) -> Severity | None:
    # "auto,nosmt" and friends: the first word is the mode.
    return Severity.MEDIUM if value and value.split(",")[0].lower() == "off" else None


def _iommu(value: str | None) -> Severity | None:
    words = set((value or "").lower().split(","))
    return Severity.MEDIUM if "off" in words else Severity.LOW if "pt" in words else None


def _clearcpuid(value: str | None) -> Severity | None:
    cleared = set((value or "").lower().split(","))
    if cleared & {"smep", "smap"}:
        return Severity.HIGH
    return Severity.MEDIUM if cleared & set(CPU_PROTECTIONS) else None


def _lsm_override(value: str | None) -> Severity | None:
    return Severity.MEDIUM if "lockdown" not in parse_lsm(value or "") else Severity.LOW


BOOT_PARAMS: tuple[ParamRule, ...] = (
    ParamRule(
        "nokaslr",
        _flag(Severity.MEDIUM),
        "absent",
        "turns off KASLR: the kernel sits at its link-time address, so every kernel "
        "address is known to an attacker",
    ),
    ParamRule(
        "lockdown",
        _when(["none"], Severity.MEDIUM),
        "integrity or confidentiality",
        "asks for no kernel lockdown, which leaves root free to modify the kernel",
    ),
    ParamRule(
        "module.sig_enforce",
        _when(_OFF, Severity.MEDIUM),
        "absent or 1",
        "asks the kernel to load modules without a valid signature",
    ),
    ParamRule(
        "mitigations",
        _mitigations,
        "auto",
        "turns off every CPU vulnerability mitigation, so user space can read kernel "
        "memory through side channels",
    ),
    ParamRule(
        "nosmep",
        _flag(Severity.HIGH),
        "absent",
        "turns off SMEP, so the kernel will execute user-space code (ret2usr)",
    ),
    ParamRule(
        "nosmap",
        _flag(Severity.HIGH),
        "absent",
        "turns off SMAP, so the kernel will use data planted in user space",
    ),
    ParamRule(
        "noumip",
        _flag(Severity.LOW),
        "absent",
        "turns off UMIP, so user space can read descriptor-table addresses",
    ),
    ParamRule(
        "clearcpuid",
        _clearcpuid,
        "no protection flags",
        "hides CPU protection features from the kernel, which then does not use them",
    ),
    ParamRule(
        "nopti",
        _flag(Severity.MEDIUM),
        "absent",
        "turns off page table isolation: on Meltdown-affected CPUs user space can read "
        "kernel memory",
    ),
    ParamRule(
        "pti",
        _when(["off"], Severity.MEDIUM),
        "on or auto",
        "turns off page table isolation: on Meltdown-affected CPUs user space can read "
        "kernel memory",
    ),
    ParamRule(
        "ibt",
        _when(["off"], Severity.MEDIUM),
        "absent",
        "turns off Indirect Branch Tracking, the hardware check on indirect calls that "
        "breaks code-reuse attacks",
    ),
    ParamRule(
        "rodata",
        _when(["off"], Severity.HIGH),
        "absent or on",
        "leaves kernel text and read-only data writable, so a single write primitive can "
        "patch the kernel",
    ),
    ParamRule(
        "norandmaps",
        _flag(Severity.MEDIUM),
        "absent",
        "turns off address space randomization for every process",
    ),
    ParamRule(
        "randomize_kstack_offset",
        _when(_OFF, Severity.LOW),
        "absent or on",
        "turns off per-syscall kernel stack offset randomization",
    ),
    ParamRule(
        "iommu",
        _iommu,
        "absent or on",
        "lets devices DMA into any memory, and DMA can patch the kernel",
    ),
    ParamRule(
        "intel_iommu",
        _when(["off"], Severity.MEDIUM),
        "on",
        "lets devices DMA into any memory, and DMA can patch the kernel",
    ),
    ParamRule(
        "amd_iommu",
        _when(["off"], Severity.MEDIUM),
        "absent",
        "lets devices DMA into any memory, and DMA can patch the kernel",
    ),
    ParamRule(
        "lsm",
        _lsm_override,
        "the built-in list",
        "overrides the built-in LSM list at boot, so a boot loader change decides which "
        "security modules run",
    ),
    ParamRule(
        "security", _flag(Severity.LOW), "absent", "overrides the built-in major LSM at boot"
    ),
    ParamRule("selinux", _when(["0"], Severity.LOW), "absent", "turns SELinux off"),
    ParamRule(
        "enforcing",
        _when(["0"], Severity.MEDIUM),
        "absent or 1",
        "puts SELinux in permissive mode, where it logs but denies nothing",
    ),
    ParamRule("apparmor", _when(["0"], Severity.LOW), "absent", "turns AppArmor off"),
    ParamRule(
        "ima_appraise",
        _when(["off", "fix", "log"], Severity.LOW),
        "enforce",
        "stops IMA appraisal from enforcing, so files with bad measurements still run",
    ),
)
