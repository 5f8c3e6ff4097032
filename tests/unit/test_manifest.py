"""Hook manifests: the documented example parses; every malformed one names file, line and key."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

from patchguard.policy.manifest import (
    DeclaredKprobe,
    Loader,
    ManifestError,
    load_manifest,
    manifest_from_dict,
    parse_manifest,
)
from patchguard.policy.toml_lines import line_of

DOCS = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"
SHA = "ab" * 32
HEAD = """\
vendor = "Acme Security"
product = "acme-sensor"
version = "4.2.0"
contact = "security@acme.example"
justification = \"\"\"
Telemetry for the EDR agent.
[[bpf_program]]
name = "not a table: this is inside the string"
\"\"\"
"""
PROGRAM = f"""
[[bpf_program]]
name = "trace_kill"
prog_type = "tracepoint"
attach = "tracepoint:sys_enter_kill"
helpers = ["bpf_get_current_pid_tgid", "bpf_ringbuf_output"]
loader = {{ path = "/opt/acme/bin/acme-sensor", sha256 = "{SHA}" }}
"""


def parse(text: str) -> object:
    return parse_manifest(text.encode(), "vendor.toml")


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def line_with(text: str, needle: str, occurrence: int = 1) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[occurrence - 1]


def doc_example() -> str:
    found = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert found, "docs/manifest.md has no ```toml example"
    return found.group(1)


def test_the_documented_example_parses_in_full() -> None:
    text = doc_example()
    m = parse_manifest(text.encode(), "docs/manifest.md")
    assert (m.vendor, m.product, m.version) == ("Acme Security", "acme-sensor", "4.2.0")
    assert [p.name for p in m.bpf_programs] == ["trace_kill", "file_open", "net_connect"]
    assert m.bpf_programs[0].attach == ("tracepoint:sys_enter_kill",)
    assert m.bpf_programs[1].prog_type == "tracing"
    assert m.bpf_programs[2].attach == ("kprobe:tcp_v4_connect", "kprobe:tcp_v6_connect")
    assert m.bpf_programs[0].loader == Loader(
        "/opt/acme/bin/acme-sensor",
        "9f2c4b8e1d0a7f3e6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a",
    )
    assert m.kprobes == (DeclaredKprobe("do_sys_openat2", 0, "kprobe", None),)
    assert m.modules[0].signer == "Acme Security kernel module signing key"
    assert m.livepatches[0].functions == ("nft_verdict_init",)
    assert m.ftrace[0].owner == "acme_exec_hook"
    assert m.sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_to_dict_round_trips_through_the_same_checks() -> None:
    m = parse_manifest(doc_example().encode(), "x.toml")
    assert m.sha256
    assert manifest_from_dict(m.to_dict(), "ledger") == dataclasses.replace(m, sha256="")


def test_load_manifest_reads_the_file_and_hashes_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "acme.toml"
    path.write_text(HEAD + PROGRAM)
    m = load_manifest(path)
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loader = m.bpf_programs[0].loader
    assert loader is not None and loader.sha256 == SHA


def test_the_brief_example_error_names_file_line_and_key() -> None:
    second = PROGRAM.replace("trace_kill", "open_probe").replace(
        '"bpf_ringbuf_output"]', '"bpf_ringbuf_output", 3]'
    )
    text = HEAD + PROGRAM + second
    line = line_with(text, ", 3]")
    assert (
        error_of(text) == f"vendor.toml:{line}: bpf_program[1].helpers: expected a list of strings"
    )


@pytest.mark.parametrize(
    ("change", "needle", "key", "reason"),
    [
        (
            ('prog_type = "tracepoint"', 'prog_type = "tracepont"'),
            "tracepont",
            "bpf_program[0].prog_type",
            "unknown program type",
        ),
        (
            (f'sha256 = "{SHA}"', 'sha256 = "abc"'),
            "sha256 =",
            "bpf_program[0].loader.sha256",
            "expected 64 hex digits",
        ),
        (
            ('path = "/opt', 'path = "opt'),
            "path =",
            "bpf_program[0].loader.path",
            "expected an absolute path",
        ),
        (
            ("helpers = [", 'helpers = ["bpf_get_current_pid_tgid", '),
            "helpers =",
            "bpf_program[0].helpers",
            "listed twice",
        ),
        (
            ("helpers = [", 'helpers = ["not a symbol", '),
            "helpers =",
            "bpf_program[0].helpers",
            "is not a kernel symbol name",
        ),
        (
            ('attach = "tracepoint:sys_enter_kill"', "attach = []"),
            "attach =",
            "bpf_program[0].attach",
            "at least one",
        ),
        (
            ('name = "trace_kill"', 'name = "trace_kill"\nflavour = "x"'),
            "flavour",
            "bpf_program[0].flavour",
            "unknown key",
        ),
        (
            ('version = "4.2.0"', "version = 4"),
            "version =",
            "version",
            "expected a non-empty string",
        ),
        (
            ('contact = "security@acme.example"', 'contact = "x"\nhomepage = "y"'),
            "homepage",
            "homepage",
            "unknown key",
        ),
    ],
)
def test_schema_errors_carry_file_line_and_key(
    change: tuple[str, str], needle: str, key: str, reason: str
) -> None:
    text = (HEAD + PROGRAM).replace(*change)
    assert text != HEAD + PROGRAM
    message = error_of(text)
    assert message.startswith(f"vendor.toml:{line_with(text, needle)}: {key}: "), message
    assert reason in message


def test_a_missing_key_points_at_its_table() -> None:
    text = HEAD + PROGRAM.replace(
        'helpers = ["bpf_get_current_pid_tgid", "bpf_ringbuf_output"]\n', ""
    )
    assert (
        error_of(text)
        == f"vendor.toml:{line_with(text, '[[bpf_program]]', 2)}: bpf_program[0].helpers: missing"
    )


def test_a_missing_top_level_key_is_named() -> None:
    assert error_of((HEAD + PROGRAM).replace('vendor = "Acme Security"\n', "")) == (
        "vendor.toml: vendor: missing"
    )


def test_errors_in_later_tables_point_into_the_right_table() -> None:
    text = (
        HEAD
        + PROGRAM
        + '\n[[kprobe]]\nsymbol = "do_sys_openat2"\n'
        + '\n[[kprobe]]\nsymbol = "vfs_read"\nkind = "uprobe"\n'
        + '\n[[module]]\nname = "acme guard"\nsigner = "Acme"\n'
    )
    assert error_of(text) == (
        f"vendor.toml:{line_with(text, 'uprobe')}: kprobe[1].kind: "
        "expected one of kprobe, kretprobe"
    )
    text = text.replace('"uprobe"', '"kretprobe"')
    assert error_of(text) == (
        f"vendor.toml:{line_with(text, 'acme guard')}: module[0].name: "
        "'acme guard' is not a module name"
    )


def test_sub_table_loader_errors_point_at_the_sub_table() -> None:
    program = (
        '\n[[bpf_program]]\nname = "p"\nprog_type = "kprobe"\nattach = "kprobe:vfs_read"\n'
        'helpers = []\n\n[bpf_program.loader]\npath = "/usr/bin/x"\nsha256 = "nope"\n'
    )
    text = HEAD + program
    assert error_of(text).startswith(
        f"vendor.toml:{line_with(text, '[bpf_program.loader]')}: bpf_program[0].loader.sha256:"
    )


def test_offset_and_livepatch_checks() -> None:
    text = HEAD + '\n[[kprobe]]\nsymbol = "vfs_read"\noffset = -4\n'
    assert error_of(text) == (
        f"vendor.toml:{line_with(text, 'offset')}: kprobe[0].offset: "
        "expected a byte offset (0 to 4294967295)"
    )
    text = HEAD + '\n[[livepatch]]\nname = "lp"\nfunctions = []\n'
    assert error_of(text) == (
        f"vendor.toml:{line_with(text, 'functions')}: livepatch[0].functions: "
        "expected at least one function"
    )


def test_a_manifest_without_hooks_is_refused() -> None:
    assert error_of(HEAD) == (
        "vendor.toml: declares no hooks (no bpf_program, ftrace, kprobe, module or livepatch)"
    )


def test_toml_syntax_errors_give_the_line() -> None:
    text = HEAD + PROGRAM.replace(
        'helpers = ["bpf_get_current_pid_tgid", "bpf_ringbuf_output"]', "helpers = ["
    )
    message = error_of(text)
    assert re.match(r"vendor\.toml:\d+: not valid TOML: ", message), message
    assert "(at line" not in message
    line = int(message.split(":")[1])
    assert line >= line_with(text, "helpers = [")


def test_not_utf8_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"^bad\.toml: not UTF-8 text"):
        parse_manifest(b"vendor = '\xff'", "bad.toml")
    with pytest.raises(ManifestError, match="cannot read it"):
        load_manifest(tmp_path / "missing.toml")


def test_table_of_the_wrong_shape_is_named() -> None:
    text = HEAD + 'bpf_program = "everything"\n'
    assert error_of(text) == (
        f"vendor.toml:{line_with(text, 'bpf_program =')}: bpf_program: "
        "expected [[bpf_program]] tables"
    )


def test_line_of_skips_multi_line_strings() -> None:
    text = HEAD + PROGRAM
    # The justification holds "[[bpf_program]]" and a name line; the real table comes later.
    assert line_of(text, "bpf_program[0].name") == line_with(text, 'name = "trace_kill"')
    assert line_of(text, "contact") == 4
    assert line_of(text, "bpf_program[3].name") is None


def test_every_shipped_manifest_parses_and_lkrg_declares_its_hooks() -> None:
    shipped = Path(__file__).resolve().parents[2] / "src/patchguard/policy/manifests"
    manifests = {p.stem: load_manifest(p) for p in sorted(shipped.glob("*.toml"))}
    assert "lkrg" in manifests and len(manifests) >= 4
    lkrg = manifests["lkrg"]
    assert [m.name for m in lkrg.modules] == ["lkrg"]
    kinds = {k.kind for k in lkrg.kprobes}
    assert kinds == {"kprobe", "kretprobe"} and len(lkrg.kprobes) >= 30
    assert {f.owner for f in lkrg.ftrace} == {"kprobe_ftrace_handler"}
