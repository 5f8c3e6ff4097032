"""The posture surface on files captured from a 6.18 Firecracker VM (tests/fixtures/6.18-fc),
plus hand-written edge cases, each named as such (`handwritten_*` or `HANDWRITTEN_*`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from patchguard.findings import Disposition, Finding, Severity
from patchguard.kernel import Kernel
from patchguard.surfaces.base import Status, SurfaceState
from patchguard.surfaces.posture import (
    LOCKDOWN,
    SECURE_BOOT_VAR,
    X86_64_DEFAULT_STEXT,
    ActiveLsms,
    Cmdline,
    CpuProtection,
    CpuVulnerability,
    Kaslr,
    Lockdown,
    PostureRecords,
    PostureSurface,
    SecureBoot,
    Setting,
    Taint,
    assess_records,
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

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "6.18-fc"


def captured(kernel_path: str) -> str:
    return (FIXTURE / kernel_path.lstrip("/")).read_text()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of the captured tree, for edge cases that change or remove one file."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("btf"))
    return root


def put(root: Path, kernel_path: str, content: str | bytes) -> None:
    target = root / kernel_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)


def scan(root: Path) -> tuple[SurfaceState[PostureRecords], list[Finding]]:
    surface = PostureSurface()
    state = surface.collect(Kernel(root=root))
    return state, surface.assess(state)


def by_technique(findings: list[Finding], technique: str) -> list[Finding]:
    return [f for f in findings if f.technique == technique]


def records(state: SurfaceState[PostureRecords], kind: type[object]) -> list[object]:
    return [r for r in state.records if isinstance(r, kind)]


def setting(state: SurfaceState[PostureRecords], name: str) -> Setting:
    found = [r for r in state.records.settings if r.name == name]
    assert len(found) == 1, name
    return found[0]


# --- lockdown and LSMs -------------------------------------------------------------------------


def test_parse_lockdown_captured() -> None:
    text = captured(LOCKDOWN)
    assert parse_lockdown(text) == "integrity"
    assert lockdown_modes(text) == ("none", "integrity", "confidentiality")


def test_parse_lockdown_handwritten_none() -> None:
    assert parse_lockdown("[none] integrity confidentiality\n") == "none"


@pytest.mark.parametrize(
    "handwritten",
    ["", "none integrity confidentiality", "none [integ", "[none] [integrity]", "[]"],
)
def test_parse_lockdown_handwritten_odd_text(handwritten: str) -> None:
    with pytest.raises(ValueError):
        parse_lockdown(handwritten)


def test_parse_lsm_captured() -> None:
    assert parse_lsm(captured("/sys/kernel/security/lsm")) == (
        "lockdown",
        "capability",
        "landlock",
        "bpf",
    )


def test_parse_lsm_handwritten_trailing_comma_and_empty() -> None:
    assert parse_lsm("capability,bpf,\n") == ("capability", "bpf")
    assert parse_lsm("") == ()


# --- taint -------------------------------------------------------------------------------------


def test_taint_captured_is_clean() -> None:
    value = parse_taint(captured("/proc/sys/kernel/tainted"))
    assert value == 0
    assert decode_taint(value) == []


def test_decode_taint_handwritten_several_bits() -> None:
    # P (bit 0) + O (bit 12) + E (bit 13) + K (bit 15): a proprietary, out-of-tree, unsigned
    # module on a live-patched kernel.
    flags = decode_taint(1 | 1 << 12 | 1 << 13 | 1 << 15)
    assert [(f.bit, f.letter) for f in flags] == [(0, "P"), (12, "O"), (13, "E"), (15, "K")]
    assert flags[2].meaning == "unsigned module was loaded"


def test_decode_taint_handwritten_every_documented_bit() -> None:
    letters = "".join(f.letter for f in decode_taint((1 << 20) - 1))
    assert letters == "PFSRMBUDAWCIOELKXTNJ"


def test_decode_taint_handwritten_unknown_bit() -> None:
    (flag,) = decode_taint(1 << 40)
    assert (flag.bit, flag.letter) == (40, "?")


@pytest.mark.parametrize("handwritten", ["", "x12", "-1", "1 2"])
def test_parse_taint_handwritten_odd_text(handwritten: str) -> None:
    with pytest.raises(ValueError):
        parse_taint(handwritten)


# --- command line ------------------------------------------------------------------------------


def test_parse_cmdline_captured() -> None:
    cmdline = parse_cmdline(captured("/proc/cmdline"))
    assert cmdline.last("mitigations") == "auto,no_guest_host,no_guest_guest"
    assert cmdline.last("console") == "ttyS0"
    assert cmdline.has("quiet") and cmdline.last("quiet") is None
    assert cmdline.last("rdinit") == "/process_api"
    # Everything after `--` belongs to init, not to the kernel.
    assert cmdline.init_args[0] == "--firecracker-init"
    assert "--auth-required" in cmdline.init_args
    assert not any(p.name.startswith("--") for p in cmdline.params)


def test_parse_cmdline_handwritten_quotes() -> None:
    # The two quoting forms of lib/cmdline.c next_arg(): around the value, around the whole.
    cmdline = parse_cmdline('a="x y" "b=u v" "c" d=e"f" dyndbg="file foo.c +p" last')
    assert [(p.name, p.value) for p in cmdline.params] == [
        ("a", "x y"),
        ("b", "u v"),
        ("c", None),
        ("d", 'e"f"'),  # quotes mid-value stay, as in the kernel
        ("dyndbg", "file foo.c +p"),
        ("last", None),
    ]


def test_parse_cmdline_handwritten_dashes_and_repeats() -> None:
    cmdline = parse_cmdline("module.sig-enforce=1 pti=on pti=off  \n")
    assert cmdline.last("module.sig_enforce") == "1"
    assert cmdline.last("pti") == "off"  # the last one wins


def test_parse_cmdline_handwritten_double_dash() -> None:
    cmdline = parse_cmdline("quiet -- nokaslr single")
    assert not cmdline.has("nokaslr")
    assert cmdline.init_args == ("nokaslr", "single")
    # A parameter that merely starts with -- is not the terminator.
    assert parse_cmdline("--=x y").has("y")


def test_parse_cmdline_handwritten_empty_and_unterminated_quote() -> None:
    assert parse_cmdline("") == Cmdline(())
    assert parse_cmdline('a="b c').last("a") == "b c"


# --- CPU, Secure Boot, kallsyms, one-value files -----------------------------------------------


def test_parse_cpu_flags_captured() -> None:
    flags = parse_cpu_flags(captured("/proc/cpuinfo"))
    assert {"smep", "smap", "umip"} <= flags
    assert "ibt" not in flags and "pti" not in flags


def test_parse_cpu_flags_handwritten_flag_missing_on_one_cpu() -> None:
    text = "processor\t: 0\nflags\t\t: fpu smep smap\n\nprocessor\t: 1\nflags\t\t: fpu smep\n"
    assert parse_cpu_flags(text) == frozenset({"fpu", "smep"})


def test_parse_cpu_flags_handwritten_no_flags_line() -> None:
    with pytest.raises(ValueError):
        parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n")


def test_parse_secure_boot_handwritten() -> None:
    assert parse_secure_boot(b"\x06\x00\x00\x00\x01") is True
    assert parse_secure_boot(b"\x06\x00\x00\x00\x00") is False
    with pytest.raises(ValueError):
        parse_secure_boot(b"\x06\x00\x00\x00")


def test_find_stext_captured() -> None:
    assert find_stext(captured("/proc/kallsyms").splitlines()) == X86_64_DEFAULT_STEXT


def test_find_stext_handwritten_zeroed_and_missing() -> None:
    assert find_stext(["0000000000000000 T _stext", "0000000000000000 T _text"]) == 0
    assert find_stext(["ffffffff81000000 T _text", "short line"]) is None


def test_parse_setting() -> None:
    assert parse_setting(captured("/proc/sys/kernel/kptr_restrict")) == "0"
    for handwritten in ("", "4 4 1 7"):
        with pytest.raises(ValueError):
            parse_setting(handwritten)


# --- the whole surface on the captured tree ----------------------------------------------------


def test_surface_on_captured_tree() -> None:
    state, findings = scan(FIXTURE)
    assert state.surface == "posture"
    assert state.gaps == ()
    assert state.status is Status.OK
    assert records(state, Lockdown) == [
        Lockdown("integrity", ("none", "integrity", "confidentiality"))
    ]
    assert records(state, ActiveLsms) == [ActiveLsms(("lockdown", "capability", "landlock", "bpf"))]
    assert records(state, Taint) == [Taint(0, ())]
    assert all(f.disposition is Disposition.WEAKNESS for f in findings)
    assert all(f.surface == "posture" and f.summary.endswith(".") for f in findings)

    (kptr,) = by_technique(findings, "kernel-pointers-exposed")
    assert kptr.severity is Severity.MEDIUM
    assert kptr.subject == "sysctl kernel.kptr_restrict"
    assert dict(kptr.evidence) == {
        "path": "/proc/sys/kernel/kptr_restrict",
        "value": "0",
        "expected": ">= 1",
    }

    (kaslr,) = by_technique(findings, "kaslr-off")
    assert kaslr.evidence["value"] == "0xffffffff81000000"
    assert records(state, Kaslr)[0] == Kaslr(X86_64_DEFAULT_STEXT, False, kaslr_detail(state))

    vulnerable = {
        str(f.evidence["path"]).rsplit("/", 1)[1]
        for f in findings
        if f.technique == "cpu-vulnerable"
    }
    assert vulnerable == {"spec_rstack_overflow", "spec_store_bypass"}
    assert by_technique(findings, "bpf-jit-unhardened")[0].severity is Severity.LOW
    assert by_technique(findings, "symlinks-unprotected")

    # Fine on this machine: lockdown integrity, smep/smap present, no weakening boot params.
    for technique in ("lockdown-off", "lockdown-missing", "no-smep", "no-smap"):
        assert not by_technique(findings, technique), technique
    assert not by_technique(findings, "weakening-boot-param")
    assert not [f for f in findings if f.technique.startswith("taint-")]
    assert not by_technique(findings, "unsigned-modules-loadable")


def kaslr_detail(state: SurfaceState) -> str:
    kaslr = records(state, Kaslr)[0]
    assert isinstance(kaslr, Kaslr)
    assert kaslr.detail
    return kaslr.detail


def test_surface_captured_absent_sysctls_are_records_not_findings() -> None:
    state, findings = scan(FIXTURE)
    for name in ("kernel.modules_disabled", "kernel.kexec_load_disabled", "kernel.sysrq"):
        absent = setting(state, name)
        assert absent.value is None and absent.absent, name
    assert "CONFIG_MODULES" in str(setting(state, "kernel.modules_disabled").absent)
    assert "CONFIG_MODULES" in str(setting(state, "module.sig_enforce").absent)
    assert "Yama" in str(setting(state, "kernel.yama.ptrace_scope").absent)
    subjects = {f.subject for f in findings}
    assert "sysctl kernel.modules_disabled" not in subjects
    assert "sysctl kernel.kexec_load_disabled" not in subjects


def test_surface_captured_secure_boot_and_cpu() -> None:
    state, findings = scan(FIXTURE)
    assert records(state, SecureBoot) == [
        SecureBoot(False, None, "not an EFI boot (no /sys/firmware/efi)")
    ]
    (boot,) = by_technique(findings, "boot-unverified")
    assert boot.severity is Severity.INFO
    present = {
        r.flag: r.present for r in records(state, CpuProtection) if isinstance(r, CpuProtection)
    }
    assert present == {
        "smep": True,
        "smap": True,
        "umip": True,
        "ibt": False,
        "user_shstk": False,
        "pti": False,
    }
    assert len(records(state, CpuVulnerability)) == 19


def test_surface_counts_and_assess_are_consistent() -> None:
    state, findings = scan(FIXTURE)
    assert state.counts["settings"] == len(state.records)
    assert state.counts["weak"] == sum(1 for f in findings if f.severity >= Severity.LOW)
    assert state.counts["weak"] == 6
    assert assess_records(state.records) == findings


# --- the whole surface on edited copies of the captured tree -----------------------------------


def test_handwritten_lockdown_none(tree: Path) -> None:
    put(tree, LOCKDOWN, "[none] integrity confidentiality\n")
    _, findings = scan(tree)
    (off,) = by_technique(findings, "lockdown-off")
    assert off.severity is Severity.HIGH
    assert off.evidence["value"] == "none"


def test_handwritten_lockdown_lsm_not_active(tree: Path) -> None:
    (tree / LOCKDOWN.lstrip("/")).unlink()
    put(tree, "/sys/kernel/security/lsm", "capability,landlock,bpf")
    state, findings = scan(tree)
    assert records(state, Lockdown) == [Lockdown(None)]
    assert by_technique(findings, "lockdown-missing")[0].severity is Severity.HIGH


def test_missing_lockdown_file_with_lockdown_lsm_is_a_gap(tree: Path) -> None:
    (tree / LOCKDOWN.lstrip("/")).unlink()
    state, findings = scan(tree)
    assert state.status is Status.PARTIAL
    (gap,) = state.gaps
    assert gap.what == "lockdown mode"
    assert "not present" in gap.reason and "ENOENT" in gap.reason
    assert not records(state, Lockdown)
    assert not by_technique(findings, "lockdown-missing")


def test_missing_securityfs_is_a_gap_for_both(tree: Path) -> None:
    shutil.rmtree(tree / "sys/kernel/security")
    state, _ = scan(tree)
    assert {g.what for g in state.gaps} == {"lockdown mode", "active LSMs"}


def test_handwritten_odd_lockdown_is_a_gap(tree: Path) -> None:
    put(tree, LOCKDOWN, "none integrity\n")  # no [selected] mode: truncated or foreign
    state, _ = scan(tree)
    (gap,) = state.gaps
    assert gap.what == "lockdown mode" and "unexpected content" in gap.reason


def test_handwritten_taint_several_bits(tree: Path) -> None:
    put(tree, "/proc/sys/kernel/tainted", str(1 | 1 << 12 | 1 << 13 | 1 << 17) + "\n")
    _, findings = scan(tree)
    taints = {f.technique: f for f in findings if f.technique.startswith("taint-")}
    assert set(taints) == {
        "taint-proprietary-module",
        "taint-out-of-tree-module",
        "taint-unsigned-module",
    }  # T (randstruct) is a build fact, not a finding
    unsigned = taints["taint-unsigned-module"]
    assert unsigned.severity is Severity.HIGH
    assert unsigned.attack_id == "T1547.006"
    assert unsigned.evidence["bit"] == 13 and unsigned.evidence["value"] == "143361"


def test_handwritten_taint_garbage_is_a_gap(tree: Path) -> None:
    put(tree, "/proc/sys/kernel/tainted", "banana\n")
    state, _ = scan(tree)
    assert [g.what for g in state.gaps] == ["taint"]
    assert not records(state, Taint)


def test_handwritten_weakening_cmdline(tree: Path) -> None:
    put(
        tree,
        "/proc/cmdline",
        'BOOT_IMAGE=/vmlinuz nokaslr "lockdown=none" module.sig_enforce=0 mitigations=off '
        "nosmap pti=off iommu=off rodata=off lsm=capability,bpf slab_nomerge -- nosmep\n",
    )
    state, findings = scan(tree)
    weak = {
        str(f.evidence["param"]): f.severity for f in by_technique(findings, "weakening-boot-param")
    }
    assert weak == {
        "nokaslr": Severity.MEDIUM,
        "lockdown": Severity.MEDIUM,
        "module.sig_enforce": Severity.MEDIUM,
        "mitigations": Severity.MEDIUM,
        "nosmap": Severity.HIGH,
        "pti": Severity.MEDIUM,
        "iommu": Severity.MEDIUM,
        "rodata": Severity.HIGH,
        "lsm": Severity.MEDIUM,  # the override drops lockdown
    }  # nosmep after `--` is init's; slab_nomerge is not a weakness
    (kaslr,) = records(state, Kaslr)
    assert kaslr == Kaslr(X86_64_DEFAULT_STEXT, False, "nokaslr on the kernel command line")


def test_handwritten_harmless_cmdline_values(tree: Path) -> None:
    put(tree, "/proc/cmdline", "pti=on module.sig_enforce=1 iommu=force lsm=lockdown,bpf\n")
    _, findings = scan(tree)
    (lsm,) = by_technique(findings, "weakening-boot-param")
    assert lsm.evidence["param"] == "lsm" and lsm.severity is Severity.LOW


def test_handwritten_kallsyms_zeroed(tree: Path) -> None:
    # What a reader without CAP_SYSLOG sees under kptr_restrict=1.
    put(tree, "/proc/kallsyms", "0000000000000000 T _stext\n0000000000000000 T _text\n")
    state, findings = scan(tree)
    (kaslr,) = records(state, Kaslr)
    assert isinstance(kaslr, Kaslr)
    assert kaslr.in_effect is None and "zero addresses" in kaslr.detail
    assert [g.what for g in state.gaps] == ["KASLR"]
    assert not by_technique(findings, "kaslr-off")


def test_handwritten_kaslr_in_effect(tree: Path) -> None:
    put(tree, "/proc/kallsyms", "ffffffff9a000000 T _text\nffffffff9a000000 T _stext\n")
    state, findings = scan(tree)
    (kaslr,) = records(state, Kaslr)
    assert isinstance(kaslr, Kaslr) and kaslr.in_effect is True
    assert not by_technique(findings, "kaslr-off")


def test_missing_kallsyms_is_a_gap(tree: Path) -> None:
    (tree / "proc/kallsyms").unlink()
    state, _ = scan(tree)
    (gap,) = state.gaps
    assert gap.what == "KASLR" and "ENOENT" in gap.reason


def test_handwritten_sysctl_values(tree: Path) -> None:
    put(tree, "/proc/sys/kernel/kptr_restrict", "2\n")
    put(tree, "/proc/sys/kernel/unprivileged_bpf_disabled", "0\n")
    put(tree, "/proc/sys/kernel/perf_event_paranoid", "-1\n")
    put(tree, "/proc/sys/kernel/randomize_va_space", "1\n")
    put(tree, "/proc/sys/vm/mmap_min_addr", "0\n")
    _, findings = scan(tree)
    assert not by_technique(findings, "kernel-pointers-exposed")
    severities = {f.technique: f.severity for f in findings}
    assert severities["unprivileged-bpf"] is Severity.MEDIUM
    assert severities["perf-events-open"] is Severity.MEDIUM
    assert severities["aslr-weak"] is Severity.LOW
    assert severities["null-page-mappable"] is Severity.MEDIUM


def test_handwritten_odd_sysctl_is_a_gap(tree: Path) -> None:
    put(tree, "/proc/sys/kernel/kptr_restrict", "zero\n")
    state, findings = scan(tree)
    (gap,) = state.gaps
    assert gap.what == "setting kernel.kptr_restrict" and "'zero'" in gap.reason
    assert not by_technique(findings, "kernel-pointers-exposed")


def test_missing_sysctl_tree_is_a_gap_not_absent(tree: Path) -> None:
    shutil.rmtree(tree / "proc/sys")
    state, _ = scan(tree)
    whats = {g.what for g in state.gaps}
    assert {"taint", "setting kernel.kptr_restrict", "setting kernel.modules_disabled"} <= whats
    # Only module.sig_enforce, which lives under /sys, is still known (absent: no modules).
    assert [r.name for r in records(state, Setting) if isinstance(r, Setting)] == [
        "module.sig_enforce"
    ]


def test_handwritten_unsigned_modules_loadable(tree: Path) -> None:
    put(tree, "/proc/modules", "")
    put(tree, "/proc/sys/kernel/modules_disabled", "0\n")
    put(tree, "/sys/module/module/parameters/sig_enforce", "N\n")
    put(tree, LOCKDOWN, "[none] integrity confidentiality\n")
    _, findings = scan(tree)
    (modules,) = by_technique(findings, "unsigned-modules-loadable")
    assert modules.attack_id == "T1547.006"
    assert modules.evidence["sig_enforce"] == "N"


def test_handwritten_modules_signed_or_locked_down(tree: Path) -> None:
    put(tree, "/proc/modules", "")
    put(tree, "/proc/sys/kernel/modules_disabled", "0\n")
    put(tree, "/sys/module/module/parameters/sig_enforce", "N\n")
    # Lockdown integrity (the captured mode) refuses unsigned modules.
    assert not by_technique(scan(tree)[1], "unsigned-modules-loadable")
    # Without CONFIG_MODULE_SIG, lockdown has no signature to check.
    (tree / "sys/module/module/parameters/sig_enforce").unlink()
    assert by_technique(scan(tree)[1], "unsigned-modules-loadable")


def test_handwritten_kexec(tree: Path) -> None:
    put(tree, "/proc/sys/kernel/kexec_load_disabled", "0\n")
    assert not by_technique(scan(tree)[1], "kexec-load-allowed")  # lockdown integrity
    put(tree, LOCKDOWN, "[none] integrity confidentiality\n")
    assert by_technique(scan(tree)[1], "kexec-load-allowed")


@pytest.mark.parametrize(
    ("value", "technique", "severity"),
    [
        (b"\x06\x00\x00\x00\x00", "secure-boot-off", Severity.MEDIUM),
        (b"\x06\x00\x00\x00\x01", None, None),
    ],
)
def test_handwritten_secure_boot(
    tree: Path, value: bytes, technique: str | None, severity: Severity | None
) -> None:
    put(tree, SECURE_BOOT_VAR, value)
    state, findings = scan(tree)
    (sb,) = records(state, SecureBoot)
    assert isinstance(sb, SecureBoot) and sb.efi and sb.enabled is (value[4] == 1)
    boot = [f for f in findings if f.subject == "Secure Boot"]
    assert [(f.technique, f.severity) for f in boot] == (
        [(technique, severity)] if technique else []
    )


def test_handwritten_efi_without_efivarfs_is_a_gap(tree: Path) -> None:
    (tree / "sys/firmware/efi/efivars").mkdir(parents=True)  # efivarfs not mounted: empty
    state, _ = scan(tree)
    (gap,) = state.gaps
    assert gap.what == "Secure Boot" and "ENOENT" in gap.reason


def test_handwritten_cpu_without_smap(tree: Path) -> None:
    cpuinfo = captured("/proc/cpuinfo").replace(" smap ", " ", 1)
    put(tree, "/proc/cpuinfo", cpuinfo)
    _, findings = scan(tree)
    (smap,) = by_technique(findings, "no-smap")
    assert smap.severity is Severity.MEDIUM and smap.evidence["flag"] == "smap"
    assert not by_technique(findings, "no-smep")


def test_handwritten_meltdown_vulnerable(tree: Path) -> None:
    put(tree, "/sys/devices/system/cpu/vulnerabilities/meltdown", "Vulnerable\n")
    _, findings = scan(tree)
    (meltdown,) = [f for f in findings if f.subject == "cpu vulnerability meltdown"]
    assert meltdown.severity is Severity.MEDIUM and meltdown.evidence["value"] == "Vulnerable"


def test_missing_cpu_files_are_gaps(tree: Path) -> None:
    (tree / "proc/cpuinfo").unlink()
    shutil.rmtree(tree / "sys/devices/system/cpu/vulnerabilities")
    state, _ = scan(tree)
    assert {g.what for g in state.gaps} == {"CPU protections", "CPU vulnerabilities"}
    assert all("ENOENT" in g.reason for g in state.gaps)


def test_empty_tree_never_raises(tmp_path: Path) -> None:
    state, findings = scan(tmp_path)
    assert state.status is Status.UNAVAILABLE
    assert findings == []
    assert len(state.gaps) >= 8
