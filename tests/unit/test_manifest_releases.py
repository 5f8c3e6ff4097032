"""A loader declared by several builds (`releases`, one exact sha256 each): parsed and checked
like every other key (file, line, key), carried through a ledger request, and matched against a
real process, this test's own interpreter, by the hash of its executable."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from support.bpf_records import bpf_program
from support.manifests import manifest_error

from patchguard.policy.manifest import (
    DeclaredBpfProgram,
    Loader,
    load_manifest,
    manifest_from_dict,
    parse_manifest,
)
from patchguard.policy.match import differences
from patchguard.surfaces.ebpf import Attachment, BpfProgram, Owner

MANIFESTS = Path(__file__).resolve().parents[2] / "src/patchguard/policy/manifests"
OLD, NEW = "ab" * 32, "cd" * 32
HEAD = """\
vendor = "Debian (systemd packaging)"
product = "unit sandboxing"
version = "252"
contact = "sre@example.invalid"
justification = "Drops a unit's packets."

[[bpf_program]]
name = "sd_fw_ingress"
prog_type = "cgroup_skb"
attach = ["cgroup on /sys/fs/cgroup/a.service inet_ingress"]
helpers = []
"""


def loader_line(body: str) -> str:
    return f"loader = {{ path = {os.path.realpath('/proc/self/exe')!r}, {body} }}\n".replace(
        "'", '"'
    )


def parse(text: str) -> DeclaredBpfProgram:
    return parse_manifest(text.encode(), "systemd.toml").bpf_programs[0]


def error_of(text: str) -> str:
    return manifest_error(text, "systemd.toml")


def test_releases_name_each_build_by_its_release() -> None:
    declared = parse(
        HEAD + loader_line(f'releases = {{ "252.38-1" = "{OLD}", "252.39-1" = "{NEW}" }}')
    )
    assert declared.loader is not None
    assert declared.loader.releases == (("252.38-1", OLD), ("252.39-1", NEW))
    assert declared.loader.digests == {OLD, NEW}
    assert declared.loader.sha256 == ""


def test_one_sha256_keeps_its_old_form_through_a_ledger_request() -> None:
    text = HEAD + loader_line(f'sha256 = "{OLD.upper()}"')
    m = parse_manifest(text.encode(), "x.toml")
    path = os.path.realpath("/proc/self/exe")
    assert m.to_dict()["bpf_program"][0]["loader"] == {"path": path, "sha256": OLD}
    assert manifest_from_dict(m.to_dict(), "ledger") == dataclasses.replace(m, sha256="")


def test_releases_round_trip_through_a_ledger_request() -> None:
    text = HEAD + loader_line(f'releases = {{ "252.38-1" = "{OLD}", "252.39-1" = "{NEW}" }}')
    m = parse_manifest(text.encode(), "x.toml")
    assert m.to_dict()["bpf_program"][0]["loader"]["releases"] == {"252.38-1": OLD, "252.39-1": NEW}
    assert manifest_from_dict(m.to_dict(), "ledger") == dataclasses.replace(m, sha256="")


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        (f'sha256 = "{OLD}", releases = {{ "1" = "{NEW}" }}', "loader.sha256", "either sha256"),
        ('path2 = "x"', "loader.path2", "unknown key"),
        ("releases = {}", "loader.releases", "at least one release"),
        ('releases = { "1" = "abc" }', "loader.releases", "expected 64 hex digits"),
        (f'releases = {{ "1" = "{OLD}", "2" = 3 }}', "loader.releases", "expected 64 hex"),
        ('releases = ["x"]', "loader.releases", "expected a table"),
        (f'releases = {{ "a\\u001b[2J" = "{OLD}" }}', "loader.releases", "control characters"),
        (f'releases = {{ " " = "{OLD}" }}', "loader.releases", "release name is empty"),
    ],
)
def test_malformed_releases_name_file_line_and_key(body: str, key: str, reason: str) -> None:
    text = HEAD + loader_line(body)
    line = text.splitlines().index(loader_line(body).rstrip("\n")) + 1
    message = error_of(text)
    assert message.startswith(f"systemd.toml:{line}: bpf_program[0].{key}: "), message
    assert reason in message and "\n" not in message and "\x1b" not in message


def held_by_this_process() -> BpfProgram:
    me = Owner(os.getpid(), "python3", os.path.realpath("/proc/self/exe"), False, False, 5)
    cgroup = Attachment(
        "cgroup", "cgroup on /sys/fs/cgroup/a.service inet_ingress", None, None, None
    )
    return bpf_program(prog_type="cgroup_skb", name="sd_fw_ingress", attachments=(cgroup,),
                       owners=(me,))  # fmt: skip


def test_any_declared_release_matches_the_running_loader_and_no_other_hash_does() -> None:
    mine = hashlib.sha256(Path("/proc/self/exe").read_bytes()).hexdigest()
    both = parse(HEAD + loader_line(f'releases = {{ "old" = "{OLD}", "this" = "{mine}" }}'))
    stale = parse(HEAD + loader_line(f'releases = {{ "old" = "{OLD}", "older" = "{NEW}" }}'))
    assert differences(held_by_this_process(), both) == []
    (diff,) = differences(held_by_this_process(), stale)
    assert diff.endswith("has another sha256 than declared"), diff


def test_the_shipped_systemd_manifest_pins_its_loader_by_debian_release() -> None:
    manifest = load_manifest(MANIFESTS / "systemd.toml")
    loaders = {p.loader for p in manifest.bpf_programs}
    assert len(loaders) == 1
    (loader,) = loaders
    assert isinstance(loader, Loader) and loader.path == "/usr/lib/systemd/systemd"
    assert loader.releases and all(version.startswith("252.") for version, _ in loader.releases)
