"""The technique catalogue is complete: every technique the code can name is in it, the docs
list exactly its entries, and a finding with any other name is refused."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from patchguard.findings import Finding, Severity
from patchguard.surfaces.modules import MODULE_TAINTS
from patchguard.surfaces.posture.rules import SYSCTLS, TAINT_FINDINGS, WITHOUT_CPU_PROTECTION
from patchguard.techniques import EVENT_KINDS, TECHNIQUES, markdown

ROOT = Path(__file__).parents[2]
KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# kebab-case literals in the source that are not technique names: function categories,
# guard event names, CLI words, codecs, process names.
NOT_TECHNIQUES = {
    "directory-listing", "module-list", "network-listing", "ledger-entry", "reload-failed",
    "ledger-untrusted", "ledger-expiry-failed", "ledger-rewritten", "server-unavailable",
    "key-add", "key-show",
    # the guard's own events, thread and phase names, and state files (guard/)
    "last-stop-unrequested", "last-run-unstopped", "state-unavailable", "guard-work",
    "stop-requested", "self-check", "guard-state", "guard-stalled",
    "max-expiry", "utf-8", "log-init", "witness-collect", "gpg-agent", "ssh-agent", "sshd-session",
    "polkit-agent-helper-1", "patchguard-read", "verify-report", "rotate-log-key",
    # fleet: message kinds, alert kinds of the server, state files, CLI words, HTTP header values
    "baseline-changed", "report-altered", "baseline-rotated", "fleet-rejected", "fleet-server",
    "fleet-spool",
    "fetch-policy", "ledger-replay", "content-length", "content-type", "no-referrer", "no-store",
    "no-cache",
    "same-origin",
    # taint technique stems, named "taint-<stem>" by the posture surface
    "live-patched", "acpi-table-override", "fwctl-debug-write", "kernel-oops", "user-taint",
    "staging-driver", "auxiliary-taint", "kernel-test", "kernel-warning", "forced-module-unload",
    # what a tracepoint probe's callback is (surfaces/tracing/probes.py's callback_kind)
    "trace-event", "no-module",
}  # fmt: skip


def kebab_literals() -> set[str]:
    found = set()
    for path in (ROOT / "src" / "patchguard").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return {text for text in found if KEBAB.match(text)}


def test_every_kebab_literal_is_a_technique_or_known_not_to_be() -> None:
    assert kebab_literals() - NOT_TECHNIQUES - set(TECHNIQUES) == set()


def test_names_built_from_tables_are_catalogued() -> None:
    built = {rule.technique for rule in SYSCTLS}
    built |= {"taint-" + technique for _, technique, _ in TAINT_FINDINGS.values()}
    built |= {technique for technique, _, _ in MODULE_TAINTS.values()}
    built |= {"no-" + flag for flag in WITHOUT_CPU_PROTECTION}
    built |= {f"dynamic-{kind}-event" for kind in EVENT_KINDS}
    assert built - set(TECHNIQUES) == set()


def test_docs_list_the_catalogue_exactly() -> None:
    assert (ROOT / "docs" / "techniques.md").read_text() == markdown()


def test_every_entry_says_what_it_means() -> None:
    for t in TECHNIQUES.values():
        assert NAME.match(t.name) and t.meaning and "\n" not in t.meaning
        assert t.attack_id is None or re.match(r"^T\d{4}(\.\d{3})?$", t.attack_id)


def test_a_finding_outside_the_catalogue_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the catalogue"):
        Finding("ebpf", "made-up-technique", Severity.HIGH, "prog 1", "nothing")
