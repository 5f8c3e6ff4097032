"""The kernel's module taint flags under an exception: posture's `taint O` and `taint E` are a
sanctioned module's while it alone shows them (its [[module]] declares the letters); a letter
another module shows too, or that no loaded module shows, stays a finding. The findings are the
posture and modules surfaces' own; the exceptions come from a real ledger; the module taints
are given as /sys/module would show them (and read from a directory laid out like it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_match_hooks import HEAD, exceptions, techniques

from patchguard.findings import Finding
from patchguard.policy.manifest import ManifestError, parse_manifest
from patchguard.policy.match_hooks import apply_hook_exceptions
from patchguard.policy.match_taint import apply_taint_exceptions, module_taints
from patchguard.surfaces.modules import assess as modules
from patchguard.surfaces.posture.assess import _assess_taint
from patchguard.surfaces.posture.parsers import decode_taint
from patchguard.surfaces.posture.records import Taint

UNSIGNED, OUT_OF_TREE = 1 << 13, 1 << 12  # TAINT_UNSIGNED_MODULE, TAINT_OOT_MODULE
LIVEPATCH = 1 << 15  # TAINT_LIVEPATCH
LKRG = '[[module]]\nname = "lkrg"\nsigner = "DKMS module signing key"\ntaints = "OE"\n'


def never_signed(name: str) -> str | None:
    raise AssertionError(f"the signer of {name} is not asked for a module declared unsigned")


def posture(value: int) -> list[Finding]:
    return _assess_taint(Taint(value, tuple(decode_taint(value))))


def test_taints_shown_by_the_sanctioned_module_alone_are_allowed(tmp_path: Path) -> None:
    live = exceptions(tmp_path, LKRG)
    out = apply_taint_exceptions(
        posture(UNSIGNED | OUT_OF_TREE), live, {"lkrg": {"O", "E"}}, never_signed
    )
    assert techniques(out) == [
        ("taint-out-of-tree-module", "allowed"),
        ("taint-unsigned-module", "allowed"),
    ]
    assert all(f.evidence["modules"] == ["lkrg"] and f.evidence["exception"] == 4 for f in out)
    assert "Shown by lkrg alone, as declared." in out[0].summary
    assert out[0].summary.startswith("allowed by exception #4 (Acme Security, until 2026-06-01)")


KLP = '[[module]]\nname = "pg_klp_version"\ntaints = "EKO"\n'


@pytest.mark.parametrize(
    ("shown", "left"),
    [
        ({"pg_klp_version": {"E", "K", "O"}}, "allowed"),
        ({"pg_klp_version": {"E", "O"}}, "weakness"),
    ],
    ids=["shown-by-the-live-patch", "no-module-shows-it"],
)
def test_the_live_patch_taint_is_the_declared_live_patchs(
    tmp_path: Path, shown: dict[str, set[str]], left: str
) -> None:
    """A livepatch module shows K in its own taint file, as O and E: declared, it is allowed."""
    everything = posture(UNSIGNED | OUT_OF_TREE | LIVEPATCH)
    out = apply_taint_exceptions(everything, exceptions(tmp_path, KLP), shown, never_signed)
    (patched,) = [f for f in out if f.technique == "taint-live-patched"]
    assert patched.disposition.value == left


@pytest.mark.parametrize(
    ("taints", "left"),
    [
        ({"lkrg": {"O", "E"}, "rootkit": {"O", "E"}}, ["weakness", "weakness"]),
        ({"lkrg": {"O"}, "rootkit": {"E"}}, ["allowed", "weakness"]),
        ({}, ["weakness", "weakness"]),  # set by a module since unloaded: nobody's to allow
        ({"other": {"O", "E"}}, ["weakness", "weakness"]),
    ],
    ids=["another-module-too", "E-from-another", "no-module-shows-it", "not-the-declared"],
)
def test_taints_anything_else_shows_stay_findings(
    tmp_path: Path, taints: dict[str, set[str]], left: list[str]
) -> None:
    signed = lambda _name: "DKMS module signing key"  # noqa: E731  (lkrg without E is signed)
    out = apply_taint_exceptions(
        posture(UNSIGNED | OUT_OF_TREE), exceptions(tmp_path, LKRG), taints, signed
    )
    assert [f.disposition.value for f in out] == left


def test_without_an_exception_or_with_an_undeclared_letter_nothing_is_allowed(
    tmp_path: Path,
) -> None:
    found = posture(UNSIGNED | OUT_OF_TREE)
    assert apply_taint_exceptions(found, [], {"lkrg": {"O", "E"}}) == found
    only_o = LKRG.replace('taints = "OE"', 'taints = "O"')
    out = apply_taint_exceptions(found, exceptions(tmp_path, only_o), {"lkrg": {"O", "E"}})
    assert [f.disposition.value for f in out] == ["weakness", "weakness"]


def test_the_module_findings_of_a_declared_unsigned_module_are_allowed(tmp_path: Path) -> None:
    findings = modules._assess_taints("lkrg", "OE")
    out = apply_hook_exceptions(findings, exceptions(tmp_path, LKRG), signer=never_signed)
    assert techniques(out) == [("unsigned-module", "allowed"), ("out-of-tree-module", "allowed")]
    proprietary = modules._assess_taints("lkrg", "OEP")
    out = apply_hook_exceptions(proprietary, exceptions(tmp_path / "b", LKRG), never_signed)
    mismatch = [f for f in out if f.technique == "exception-mismatch"]
    assert mismatch[0].evidence["differences"] == ["tainted the kernel with P, declared EO"]


def test_a_declared_signer_is_still_read_when_the_module_is_signed(tmp_path: Path) -> None:
    findings = modules._assess_taints("lkrg", "O")
    live = exceptions(tmp_path, LKRG)
    signed = apply_hook_exceptions(findings, live, signer=lambda _: "DKMS module signing key")
    assert techniques(signed) == [("out-of-tree-module", "allowed")]
    other = apply_hook_exceptions(findings, live, signer=lambda _: "Someone")
    assert other[1].evidence["differences"] == [
        "signed by Someone, declared DKMS module signing key"
    ]


def test_taints_key_is_checked_and_stands_in_for_a_signer() -> None:
    body = '[[module]]\nname = "lkrg"\ntaints = "EO"\n'
    (declared,) = parse_manifest((HEAD + body).encode(), "m.toml").modules
    assert declared.signer is None and declared.taints == "EO"
    for bad in ('"oe"', '"OO"', '""', "5"):
        with pytest.raises(ManifestError, match=r"m.toml:8: module\[0\].taints: "):
            parse_manifest((HEAD + body.replace('"EO"', bad)).encode(), "m.toml")
    with pytest.raises(ManifestError, match=r"module\[0\].signer: missing"):
        parse_manifest((HEAD + '[[module]]\nname = "lkrg"\n').encode(), "m.toml")


def test_module_taints_reads_each_modules_taint_file(tmp_path: Path) -> None:
    for name, letters in (("lkrg", "OE\n"), ("ext4", ""), ("veth", None)):
        (tmp_path / name).mkdir()
        if letters is not None:
            (tmp_path / name / "taint").write_text(letters)
    assert module_taints(tmp_path) == {"lkrg": {"O", "E"}}
    assert module_taints(tmp_path / "absent") == {}
