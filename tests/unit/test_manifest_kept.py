"""Programs no process holds and nothing pins (a tc classifier, kept by its filter), and
perf_event programs, whose perf event the kernel does not name: the `kept_by_attachment` key
and an empty `attach`, checked like every other key (file, line, key), and what they match."""

from __future__ import annotations

import dataclasses

import pytest
from support.bpf_records import bpf_program

from patchguard.policy.manifest import Manifest, ManifestError, parse_manifest
from patchguard.policy.match import differences
from patchguard.surfaces.ebpf import Attachment, BpfProgram, Owner

HEAD = """\
vendor = "Debian (iproute2 packaging)"
product = "tc ingress packet counter"
version = "6.1.0-3"
contact = "netops@example.invalid"
justification = "Counts packets."
"""
TC = "tc on pgc0 in netns pg-corpus-tc ingress prio 49152 handle 0x1 (direct action)"
KEPT = f"""
[[bpf_program]]
name = "tc_pass_count"
prog_type = "sched_cls"
attach = ["{TC}"]
helpers = []
kept_by_attachment = true
"""
LOADER = '{ path = "/usr/bin/bpftrace", sha256 = "' + "ab" * 32 + '" }'


def parse(text: str) -> Manifest:
    return parse_manifest(text.encode(), "corpus.toml")


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse(text)
    return str(caught.value)


def program(owners: tuple[Owner, ...] = (), pins: tuple[str, ...] = ()) -> BpfProgram:
    attachments = (Attachment("tc", TC),)
    return bpf_program(
        prog_type="sched_cls",
        name="tc_pass_count",
        attachments=attachments,
        owners=owners,
        pins=pins,
    )


def test_a_program_kept_by_its_attachment_parses_and_round_trips() -> None:
    manifest = parse(HEAD + KEPT)
    (declared,) = manifest.bpf_programs
    assert declared.kept_by_attachment and declared.loader is None and declared.pins == ()
    assert manifest.to_dict()["bpf_program"][0]["kept_by_attachment"] is True


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (f"loader = {LOADER}\n", "declares attach, and no loader or pins"),
        ('pins = ["/sys/fs/bpf/x"]\n', "declares attach, and no loader or pins"),
    ],
)
def test_kept_by_attachment_refuses_a_loader_or_pins(extra: str, reason: str) -> None:
    message = error_of(HEAD + KEPT + extra)
    assert message.startswith("corpus.toml:") and "kept_by_attachment" in message
    assert reason in message


def test_kept_by_attachment_must_be_a_boolean() -> None:
    message = error_of(HEAD + KEPT.replace("= true", '= "yes"'))
    assert message == "corpus.toml:12: bpf_program[0].kept_by_attachment: expected true or false"


def test_without_loader_pins_or_kept_by_attachment_a_program_is_refused() -> None:
    message = error_of(HEAD + KEPT.replace("kept_by_attachment = true\n", ""))
    assert "bpf_program[0].loader: missing" in message


def test_only_a_perf_event_program_may_declare_no_attach_point() -> None:
    perf = f"""
[[bpf_program]]
name = "49"
prog_type = "perf_event"
attach = []
helpers = ["bpf_map_update_elem"]
loader = {LOADER}
"""
    (declared,) = parse(HEAD + perf).bpf_programs
    assert declared.attach == ()
    message = error_of(HEAD + perf.replace('"perf_event"', '"tracepoint"'))
    assert "bpf_program[0].attach: expected at least one attach point" in message


def test_a_kept_program_matches_only_while_nothing_else_keeps_it() -> None:
    (declared,) = parse(HEAD + KEPT).bpf_programs
    assert differences(program(), declared) == []
    held = program(owners=(Owner(42, "agent", "/opt/agent", False, False, 3),))
    assert differences(held, declared) == ["held by /opt/agent (pid 42), but no loader is declared"]
    pinned = program(pins=("/sys/fs/bpf/tc",))
    assert differences(pinned, declared) == ["pinned at ['/sys/fs/bpf/tc'], declared no pins"]


def test_a_declared_lookup_the_verifier_inlined_is_not_a_difference() -> None:
    """bpftrace's counters look up their per-CPU slot, then update it; 6.10 and later inline
    the lookup, so the instructions call only the update. Any other declared helper must be
    called, and an undeclared one is a difference on every kernel."""
    body = KEPT.replace("helpers = []", 'helpers = ["bpf_map_lookup_elem", "bpf_map_update_elem"]')
    (declared,) = parse(HEAD + body).bpf_programs
    prog = program()
    assert differences(dataclasses.replace(prog, helpers=("bpf_map_update_elem",)), declared) == []
    assert differences(dataclasses.replace(prog, helpers=()), declared) == [
        "does not call declared helpers: bpf_map_update_elem"
    ]
    assert differences(dataclasses.replace(prog, helpers=("bpf_probe_write_user",)), declared)
