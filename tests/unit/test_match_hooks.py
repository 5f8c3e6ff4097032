"""Exceptions for ftrace callbacks, kprobes, livepatches and modules: a hook exactly as its
manifest declares it is allowed; one that differs keeps its findings and gets one more that
says what differed. The findings are the tracing and modules surfaces' own, made from records
in the format the parsers produce; the exceptions come from a real ledger."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from patchguard.findings import Disposition, Finding
from patchguard.kernel.livepatch import Livepatched
from patchguard.policy.exceptions import (
    decide,
    grant_key,
    init_ledger,
    live_exceptions,
    request_exception,
)
from patchguard.policy.manifest import parse_manifest
from patchguard.policy.match_hooks import apply_hook_exceptions
from patchguard.policy.rules import Request
from patchguard.signing import HostKey
from patchguard.surfaces import tracing
from patchguard.surfaces.modules import assess as modules
from patchguard.surfaces.tracing import FtraceCallback, FtraceHook, Kprobe, TracingRecords

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
HEAD = """\
vendor = "Acme Security"
product = "acme-sensor"
version = "4.2.0"
contact = "security@acme.example"
justification = "EDR telemetry"
"""
IPMODIFY = FtraceHook(
    "__x64_sys_getdents64",
    None,
    1,
    "R I",
    (FtraceCallback("tramp", "0xffffffffc0401000", "acme_cb+0x0/0x50 [acme_mod]"),),
)
KPROBE = Kprobe(0xFFFFFFFF810C5A40, "kprobe", "commit_creds", 0, None, (), "commit_creds+0x0")
KLP = FtraceHook(
    "cmdline_proc_show",
    None,
    1,
    "R I M",
    (FtraceCallback("tramp", "0xffffffffc0402000", "klp_ftrace_handler+0x0/0x100"),),
)
PATCHED = Livepatched("cmdline_proc_show", "acme_lp", "vmlinux/cmdline_proc_show,1")


def exceptions(tmp_path: Path, body: str) -> list[Request]:
    """The exceptions in force after Acme requests `body` and a reviewer approves it."""
    keys = {n: HostKey.load_or_create(tmp_path / f"{n}.key") for n in ("o", "acme", "rev")}
    path = tmp_path / "ledger.db"
    init_ledger(path, keys["o"], "Host Owner", now=T0)
    grant_key(path, keys["o"], keys["acme"].public_key_bytes(), "Acme Security", [], now=T0)
    grant_key(path, keys["o"], keys["rev"].public_key_bytes(), "Review", ["approve"], now=T0)
    manifest = parse_manifest((HEAD + body).encode(), "acme.toml")
    request = request_exception(path, keys["acme"], manifest, date(2026, 6, 1), now=T0)
    decide(path, keys["rev"], request.entry.seq, True, "ok", now=T0 + timedelta(hours=1))
    return live_exceptions(path, now=T0 + timedelta(days=1))


def techniques(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.technique, f.disposition.value) for f in found]


def test_declared_ftrace_callback_is_allowed(tmp_path: Path) -> None:
    findings = tracing.assess_records(TracingRecords.of([IPMODIFY]))
    body = '[[ftrace]]\nfunction = "__x64_sys_getdents64"\nowner = "acme_cb"\nmodule = "acme_mod"\n'
    out = apply_hook_exceptions(findings, exceptions(tmp_path, body))
    assert techniques(out) == [("ftrace-ipmodify", "allowed")]
    assert out[0].evidence["exception"] == 4 and "exception #4" in out[0].summary


def test_another_callback_on_the_declared_function_is_not_covered(tmp_path: Path) -> None:
    findings = tracing.assess_records(TracingRecords.of([IPMODIFY]))
    body = '[[ftrace]]\nfunction = "__x64_sys_getdents64"\nowner = "acme_cb"\n'  # no module
    out = apply_hook_exceptions(findings, exceptions(tmp_path, body))
    assert techniques(out) == [
        ("ftrace-ipmodify", "suspicious"),
        ("exception-mismatch", "suspicious"),
    ]
    assert out[1].evidence["differences"] == [
        "callback acme_cb+0x0/0x50 [acme_mod] is not the declared acme_cb"
    ]


def test_kprobe_point_must_match_exactly(tmp_path: Path) -> None:
    findings = tracing.assess_records(TracingRecords.of([KPROBE]))
    assert techniques(findings) == [("kprobe-sensitive-function", "suspicious")]
    allowed = apply_hook_exceptions(
        findings, exceptions(tmp_path / "a", '[[kprobe]]\nsymbol = "commit_creds"\n')
    )
    assert techniques(allowed) == [("kprobe-sensitive-function", "allowed")]
    body = '[[kprobe]]\nsymbol = "commit_creds"\noffset = 5\n'
    other = apply_hook_exceptions(findings, exceptions(tmp_path / "b", body))
    assert other[1].evidence["differences"] == ["offset 0, declared 5"]


def test_livepatch_is_allowed_only_for_its_declared_functions(tmp_path: Path) -> None:
    findings = tracing.assess_records(TracingRecords.of([KLP, PATCHED]))
    assert techniques(findings) == [("livepatch", "explained")]
    body = '[[livepatch]]\nname = "acme_lp"\nfunctions = ["cmdline_proc_show"]\n'
    assert techniques(apply_hook_exceptions(findings, exceptions(tmp_path / "a", body))) == [
        ("livepatch", "allowed")
    ]
    body = '[[livepatch]]\nname = "acme_lp"\nfunctions = ["version_proc_show"]\n'
    out = apply_hook_exceptions(findings, exceptions(tmp_path / "b", body))
    assert techniques(out) == [("livepatch", "explained"), ("exception-mismatch", "suspicious")]


@pytest.mark.parametrize(
    ("taints", "signer", "expected", "difference"),
    [
        ("O", "Acme CA", "allowed", None),
        ("O", "Someone Else", "suspicious", "signed by Someone Else, declared Acme CA"),
        ("O", None, "suspicious", "no module file for acme_mod to read its signer from (modinfo)"),
        (
            "OE",
            "Acme CA",
            "suspicious",
            "loaded without a valid signature (taint E), declared signer Acme CA",
        ),
    ],
)
def test_module_needs_its_declared_signer(
    tmp_path: Path, taints: str, signer: str | None, expected: str, difference: str | None
) -> None:
    findings = modules._assess_taints("acme_mod", taints)
    live = exceptions(tmp_path, '[[module]]\nname = "acme_mod"\nsigner = "Acme CA"\n')
    out = apply_hook_exceptions(findings, live, signer=lambda name: signer)
    assert {f.disposition.value for f in out if f.technique != "exception-mismatch"} == {expected}
    mismatches = [f for f in out if f.technique == "exception-mismatch"]
    if difference is None:
        assert mismatches == []
    else:  # one per module, however many of its findings it was compared for
        assert [m.evidence["differences"] for m in mismatches] == [[difference]]


def test_no_exception_changes_nothing() -> None:
    findings = tracing.assess_records(TracingRecords.of([IPMODIFY, KPROBE]))
    assert apply_hook_exceptions(findings, []) == findings
    assert all(f.disposition != Disposition.ALLOWED for f in findings)
