"""The posture surface on the running kernel: facts that hold on the 6.18 Firecracker VMs."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchguard.findings import Finding
from patchguard.kernel import Kernel
from patchguard.surfaces.base import Status, SurfaceState
from patchguard.surfaces.posture import (
    X86_64_DEFAULT_STEXT,
    ActiveLsms,
    Cmdline,
    Kaslr,
    Lockdown,
    PostureSurface,
    SecureBoot,
    Setting,
    Taint,
    decode_taint,
)

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def scanned() -> tuple[SurfaceState, list[Finding]]:
    surface = PostureSurface()
    state = surface.collect(Kernel())
    return state, surface.assess(state)


def only(state: SurfaceState, kind: type[object]) -> object:
    (record,) = [r for r in state.records if isinstance(r, kind)]
    return record


def test_everything_read(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    state, _ = scanned
    assert state.gaps == ()
    assert state.status is Status.OK
    assert state.counts["settings"] == len(state.records) > 30


def test_lockdown_integrity_and_lsms(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    state, findings = scanned
    assert only(state, Lockdown) == Lockdown("integrity", ("none", "integrity", "confidentiality"))
    lsms = only(state, ActiveLsms)
    assert isinstance(lsms, ActiveLsms)
    assert "lockdown" in lsms.names
    assert lsms.names == tuple(Path("/sys/kernel/security/lsm").read_text().strip().split(","))
    assert not [f for f in findings if f.technique.startswith("lockdown")]


def test_taint_matches_the_kernel(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    state, findings = scanned
    value = int(Path("/proc/sys/kernel/tainted").read_text())
    assert only(state, Taint) == Taint(value, tuple(decode_taint(value)))
    letters = {f.subject.removeprefix("taint ") for f in findings if f.subject.startswith("taint")}
    assert letters <= {flag.letter for flag in decode_taint(value)}


def test_cmdline_matches_the_kernel(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    state, _ = scanned
    cmdline = only(state, Cmdline)
    assert isinstance(cmdline, Cmdline)
    words = Path("/proc/cmdline").read_text().split()  # no quotes on these VMs
    kernel_words = words[: words.index("--")] if "--" in words else words
    expected = []
    for word in kernel_words:
        name, equals, value = word.partition("=")
        expected.append((name.replace("-", "_"), value if equals else None))
    assert [(p.name, p.value) for p in cmdline.params] == expected
    assert cmdline.init_args == tuple(words[len(kernel_words) + 1 :])
    assert not cmdline.has("nokaslr")


def test_kernel_without_modules_records_absent_settings(
    scanned: tuple[SurfaceState, list[Finding]],
) -> None:
    state, findings = scanned
    assert not Path("/proc/modules").exists()  # CONFIG_MODULES=n on these VMs
    settings = {r.name: r for r in state.records if isinstance(r, Setting)}
    for name in ("kernel.modules_disabled", "module.sig_enforce"):
        assert settings[name].value is None
        assert "CONFIG_MODULES" in str(settings[name].absent)
    assert not [f for f in findings if f.technique == "unsigned-modules-loadable"]


def test_sysctls_match_the_kernel(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    state, findings = scanned
    for record in state.records:
        if isinstance(record, Setting) and record.value is not None:
            assert Path(record.path).read_text().strip() == record.value, record.name
    kptr = Path("/proc/sys/kernel/kptr_restrict").read_text().strip()
    exposed = [f for f in findings if f.technique == "kernel-pointers-exposed"]
    assert bool(exposed) is (kptr == "0")


def test_kaslr_matches_kallsyms(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    state, findings = scanned
    with open("/proc/kallsyms") as f:
        stext = next(int(line.split()[0], 16) for line in f if line.split()[2] == "_stext")
    kaslr = only(state, Kaslr)
    assert isinstance(kaslr, Kaslr)
    assert kaslr.stext == stext
    # Firecracker boots vmlinux directly, past the decompressor that picks the KASLR offset.
    assert stext == X86_64_DEFAULT_STEXT and kaslr.in_effect is False
    (off,) = [f for f in findings if f.technique == "kaslr-off"]
    assert off.evidence["value"] == f"{stext:#x}"


def test_not_an_efi_boot(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    state, _ = scanned
    assert not Path("/sys/firmware/efi").exists()
    sb = only(state, SecureBoot)
    assert isinstance(sb, SecureBoot) and sb.efi is False and sb.enabled is None


def test_vulnerable_cpu_lines_become_findings(scanned: tuple[SurfaceState, list[Finding]]) -> None:
    _, findings = scanned
    directory = Path("/sys/devices/system/cpu/vulnerabilities")
    vulnerable = {p.name for p in directory.iterdir() if p.read_text().startswith("Vulnerable")}
    reported = {
        f.subject.removeprefix("cpu vulnerability ")
        for f in findings
        if f.technique == "cpu-vulnerable"
    }
    assert reported == vulnerable
