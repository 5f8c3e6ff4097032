"""Programs kept by their bpffs pins: the `pins` key of a declared bpf_program (checked like every
other key: file, line, key), and the matching of a program that no process holds against it.
The records are the ebpf surface's own types; the exceptions are requests as a ledger makes
them."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from support.bpf_records import ITERATOR, bpf_program
from support.manifests import manifest_error

from patchguard.findings import Disposition, Finding, Severity
from patchguard.policy.manifest import (
    DeclaredBpfProgram,
    Loader,
    load_manifest,
    manifest_from_dict,
    parse_manifest,
)
from patchguard.policy.match import apply_exceptions, differences, pinned_at
from patchguard.policy.rules import Request
from patchguard.surfaces.ebpf import BpfLink, BpfProgram, EbpfRecords, Owner

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "src/patchguard/policy/manifests/bpftool-list-tasks.toml"
SHA = "cd" * 32
PIN = "/sys/fs/bpf/list_tasks"
HEAD = """\
vendor = "Debian (bpftool packaging)"
product = "bpftool pinned task list"
version = "7.1.0+6.1.192-3"
contact = "sre@example.invalid"
justification = "Lists every task."
"""
PROGRAM = f"""
[[bpf_program]]
name = "list_tasks"
prog_type = "tracing"
attach = ["bpf_iter_task", "task"]
helpers = ["bpf_seq_printf"]
pins = ["{PIN}"]
"""
LOADER = f'loader = {{ path = "/usr/sbin/agent", sha256 = "{SHA}" }}\n'


def parse(text: str) -> DeclaredBpfProgram:
    return parse_manifest(text.encode(), "bpftool.toml").bpf_programs[0]


def error_of(text: str) -> str:
    return manifest_error(text, "bpftool.toml")


def line_with(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_pins_alone_declare_a_program_that_no_process_holds() -> None:
    declared = parse(HEAD + PROGRAM)
    assert declared.pins == (PIN,)
    assert declared.loader is None


def test_pins_and_loader_together() -> None:
    declared = parse(HEAD + PROGRAM + LOADER)
    assert declared.pins == (PIN,)
    assert declared.loader == Loader("/usr/sbin/agent", SHA)


def test_neither_loader_nor_pins_is_an_error_at_the_table() -> None:
    text = HEAD + PROGRAM.replace(f'pins = ["{PIN}"]\n', "")
    assert error_of(text) == (
        f"bpftool.toml:{line_with(text, '[[bpf_program]]')}: bpf_program[0].loader: "
        "missing (a table: {path, sha256}), and no pins either"
    )


@pytest.mark.parametrize(
    ("pins", "reason"),
    [
        ('"/sys/fs/bpf/list_tasks"', "expected a list of strings"),
        ("[]", "expected at least one path (leave pins out if it is not pinned)"),
        ('["/sys/fs/bpf/x", 3]', "expected a list of strings"),
        ('["sys/fs/bpf/x"]', "'sys/fs/bpf/x' is not an absolute, normalized bpffs path"),
        ('["/sys/fs/bpf/../x"]', "'/sys/fs/bpf/../x' is not an absolute, normalized bpffs path"),
        ('["/sys/fs/bpf/x/"]', "'/sys/fs/bpf/x/' is not an absolute, normalized bpffs path"),
        ('["/sys/fs//bpf/x"]', "'/sys/fs//bpf/x' is not an absolute, normalized bpffs path"),
        ('["//sys/fs/bpf/x"]', "'//sys/fs/bpf/x' is not an absolute, normalized bpffs path"),
        ('["/sys/fs/bpf/./x"]', "'/sys/fs/bpf/./x' is not an absolute, normalized bpffs path"),
        ('["/"]', "'/' is not an absolute, normalized bpffs path"),
        ('["/sys/fs/bpf/x", "/sys/fs/bpf/x"]', "'/sys/fs/bpf/x' is listed twice"),
    ],
)
def test_malformed_pins_name_file_line_and_key(pins: str, reason: str) -> None:
    text = HEAD + PROGRAM.replace(f'pins = ["{PIN}"]', f"pins = {pins}")
    where = f"bpftool.toml:{line_with(text, 'pins =')}: bpf_program[0].pins"
    assert error_of(text) == f"{where}: {reason}"


def test_pins_in_a_later_table_point_into_it() -> None:
    second = PROGRAM.replace(PIN, "relative").replace("list_tasks", "list_files")
    text = HEAD + PROGRAM + second
    assert error_of(text) == (
        f"bpftool.toml:{line_with(text, 'relative')}: bpf_program[1].pins: "
        "'relative' is not an absolute, normalized bpffs path"
    )


def test_to_dict_carries_pins_and_leaves_out_what_is_not_declared() -> None:
    m = parse_manifest((HEAD + PROGRAM).encode(), "bpftool.toml")
    program = m.to_dict()["bpf_program"][0]
    assert program["pins"] == [PIN]
    assert "loader" not in program
    assert manifest_from_dict(m.to_dict(), "ledger") == dataclasses.replace(m, sha256="")
    both = parse_manifest((HEAD + PROGRAM + LOADER).encode(), "bpftool.toml")
    assert manifest_from_dict(both.to_dict(), "ledger") == dataclasses.replace(both, sha256="")


def test_the_shipped_bpftool_manifest_declares_its_pin_and_no_loader() -> None:
    m = load_manifest(SHIPPED)
    (program,) = m.bpf_programs
    assert (program.name, program.prog_type, program.pins) == ("list_tasks", "tracing", (PIN,))
    assert program.loader is None
    assert program.attach == ("bpf_iter_task", "task")
    assert program.helpers == ("bpf_seq_printf",)


def test_the_documented_pinned_example_parses() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "docs/manifest.md").read_text(), re.S)
    pinned = [b for b in blocks if "pins = " in b]
    assert len(pinned) == 1, "docs/manifest.md shows one program kept by its pins"
    declared = parse(pinned[0])
    assert declared == load_manifest(SHIPPED).bpf_programs[0]


# Matching: the records as the ebpf surface makes them for `bpftool iter pin` (the program has
# no owner and no pin of its own; its iter link holds the pin).


def iterator(owners: tuple[Owner, ...] = (), pins: tuple[str, ...] = ()) -> BpfProgram:
    return bpf_program(**ITERATOR, owners=owners, pins=pins)


def iter_link(*pins: str) -> BpfLink:
    return BpfLink(91, "iter", 111, None, "task", (), pins)


def exception(text: str) -> Request:
    return Request(
        id=7,
        requested_at=datetime(2026, 1, 10, tzinfo=UTC),
        requester="ab" * 32,
        manifest=parse_manifest(text.encode(), "bpftool.toml"),
        manifest_sha256="",
        scope=None,
        expires=date(2099, 1, 1),
        status="approved",
    )


def test_pinned_at_takes_the_pins_of_the_program_and_of_its_own_links() -> None:
    other = BpfLink(92, "iter", 112, None, "task", (), ("/sys/fs/bpf/other",))
    prog = iterator(pins=("/sys/fs/bpf/prog",))
    assert pinned_at(prog, [iter_link(PIN), other]) == {PIN, "/sys/fs/bpf/prog"}
    assert pinned_at(iterator(), [other]) == set()


def test_a_program_kept_by_its_declared_pin_matches() -> None:
    declared = parse(HEAD + PROGRAM)
    assert differences(iterator(), declared, {PIN}) == []


@pytest.mark.parametrize(
    ("pins", "seen"),
    [
        ({"/sys/fs/bpf/moved"}, f"pinned at ['/sys/fs/bpf/moved'], declared ['{PIN}']"),
        ({PIN, "/sys/fs/bpf/more"}, f"pinned at ['{PIN}', '/sys/fs/bpf/more'], declared ['{PIN}']"),
        (set(), f"not pinned, declared pinned at ['{PIN}']"),
    ],
)
def test_pins_other_than_declared_are_a_difference(pins: set[str], seen: str) -> None:
    assert differences(iterator(), parse(HEAD + PROGRAM), pins) == [seen]


def test_a_pin_where_none_is_declared_is_a_difference() -> None:
    agent = Owner(812, "agent", "/usr/sbin/agent", False, False, 5)
    declared = parse(HEAD + PROGRAM.replace(f'pins = ["{PIN}"]\n', LOADER))
    diff = differences(iterator(owners=(agent,)), declared, {PIN})
    assert f"pinned at ['{PIN}'], declared no pins" in diff


def test_a_process_holding_it_needs_a_declared_loader() -> None:
    shell = Owner(4242, "python3", "/usr/bin/python3.11", False, False, 7)
    assert differences(iterator(owners=(shell,)), parse(HEAD + PROGRAM), {PIN}) == [
        "held by /usr/bin/python3.11 (pid 4242), but no loader is declared"
    ]


def test_a_declared_loader_is_still_checked_when_pins_are_declared_too() -> None:
    shell = Owner(4242, "python3", "/usr/bin/python3.11", False, False, 7)
    declared = parse(HEAD + PROGRAM + LOADER)
    assert differences(iterator(), declared, {PIN}) == [], "no process: the pins match it"
    assert differences(iterator(owners=(shell,)), declared, {PIN}) == [
        "loaded by /usr/bin/python3.11 (pid 4242), declared /usr/sbin/agent"
    ]


def test_a_loader_only_declaration_still_needs_a_loader_process() -> None:
    declared = parse(HEAD + PROGRAM.replace(f'pins = ["{PIN}"]\n', LOADER))
    assert differences(iterator(), declared, set()) == [
        "no loader process to check against the declared loader"
    ]


def test_a_covered_program_without_findings_is_shown_allowed() -> None:
    records = [iterator(), iter_link(PIN)]
    out = apply_exceptions([], EbpfRecords.of(records), [exception(HEAD + PROGRAM)], host="vm")
    assert [(f.technique, f.severity, f.disposition) for f in out] == [
        ("exception-match", Severity.INFO, Disposition.ALLOWED)
    ]
    assert out[0].summary.startswith("allowed by exception #7 (Debian (bpftool packaging)")
    assert out[0].evidence == {"prog_id": 111, "name": "list_tasks", "exception": 7}


def test_a_covered_program_with_findings_has_them_allowed_and_no_extra_one() -> None:
    finding = Finding("ebpf", "sensitive-hook", Severity.MEDIUM, "prog 111", "runs on x")
    finding = dataclasses.replace(finding, evidence={"prog_id": 111})
    out = apply_exceptions(
        [finding], EbpfRecords.of([iterator(), iter_link(PIN)]), [exception(HEAD + PROGRAM)]
    )
    assert [(f.technique, f.disposition) for f in out] == [("sensitive-hook", "allowed")]


def test_the_same_program_pinned_elsewhere_gets_a_mismatch_naming_the_pins() -> None:
    records = [iterator(), iter_link("/sys/fs/bpf/moved")]
    out = apply_exceptions([], EbpfRecords.of(records), [exception(HEAD + PROGRAM)], host="vm")
    assert [(f.technique, f.severity) for f in out] == [("exception-mismatch", Severity.HIGH)]
    assert out[0].evidence["differences"] == [
        f"pinned at ['/sys/fs/bpf/moved'], declared ['{PIN}']"
    ]
