"""`exceptions` and `ledger` commands end to end: a parser built the way the main CLI will
build it, a temporary ledger, temporary keys; every error one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from patchguard.policy import cli
from patchguard.signing import HostKey

MANIFEST = """\
vendor = "Acme Security"
product = "acme-sensor"
version = "4.2.0"
contact = "security@acme.example"
justification = "EDR telemetry"

[[bpf_program]]
name = "trace_kill"
prog_type = "tracepoint"
attach = "tracepoint:sys_enter_kill"
helpers = ["bpf_get_current_pid_tgid"]
loader = { path = "/opt/acme/bin/acme-sensor", sha256 = "%s" }
""" % ("cd" * 32)

Run = Callable[..., tuple[int, str, str]]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="patchguard")
    cli.register(top.add_subparsers(dest="command", required=True))
    return top


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Run:
    ledger = str(tmp_path / "ledger.db")

    def call(*argv: str) -> tuple[int, str, str]:
        args = parser().parse_args([*argv, "--ledger", ledger])
        code = args.policy_handler(args)
        out, err = capsys.readouterr()
        assert err.count("\n") <= 1, err  # an error is one line
        return code, out, err

    return call


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name in ("owner", "reviewer", "acme"):
        paths[name] = tmp_path / "keys" / f"{name}.key"
        HostKey.load_or_create(paths[name])
    return paths


def public_hex(path: Path) -> str:
    return HostKey.load(path).public_key_bytes().hex()


def in_days(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


@pytest.fixture
def set_up(run: Run, keys: dict[str, Path], tmp_path: Path) -> Path:
    """Owner, a reviewer who may approve, Acme's key; Acme's manifest on disk."""
    assert run("ledger", "init", "--key", str(keys["owner"]), "--owner", "Host Owner")[0] == 0
    for name, owner, roles in (("reviewer", "Review Board", ["--role", "approve"]),
                               ("acme", "Acme Security", [])):  # fmt: skip
        code, out, _ = run("ledger", "key-add", public_hex(keys[name]), "--owner", owner,
                           *roles, "--key", str(keys["owner"]))  # fmt: skip
        assert code == 0 and f"belongs to {owner}" in out
    manifest = tmp_path / "acme.toml"
    manifest.write_text(MANIFEST)
    return manifest


def test_request_decide_list_show_verify_report(
    run: Run, keys: dict[str, Path], set_up: Path
) -> None:
    acme, reviewer = str(keys["acme"]), str(keys["reviewer"])
    code, out, _ = run("exceptions", "request", str(set_up), "--key", acme,
                       "--expires", in_days(30), "--scope", "web-*", "db-1")  # fmt: skip
    assert code == 0
    assert out.startswith("exception #4 requested for Acme Security (acme-sensor 4.2.0) on web-*")

    code, _, err = run("exceptions", "approve", "4", "--key", acme, "--reason", "mine")
    assert code == 2 and err.startswith("patchguard: ") and "it cannot decide it" in err

    code, out, _ = run("exceptions", "approve", "4", "--key", reviewer, "--reason", "reviewed")
    assert code == 0 and out.startswith("exception #4 approved for Acme Security: reviewed")

    code, out, _ = run("exceptions", "list")
    assert code == 0
    assert out.split("\t")[:5] == ["#4", "approved", "Acme Security", "acme-sensor 4.2.0",
                                   "web-*,db-1"]  # fmt: skip

    code, out, _ = run("ledger", "verify")
    assert code == 0 and "5 entries verify; head " in out

    code, out, _ = run("ledger", "show")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 5
    assert lines[3].split("\t")[0::2] == ["4", "request"]
    assert lines[4].split("\t")[2] == "approve"

    code, out, _ = run("ledger", "show", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["format"] == "patchguard.ledger/1" and len(doc["entries"]) == 5

    code, out, _ = run("exceptions", "request", str(set_up), "--key", acme,
                       "--expires", in_days(10))  # fmt: skip
    assert code == 0 and "#6" in out and "all hosts" in out
    assert run("exceptions", "deny", "6", "--key", reviewer, "--reason", "duplicate")[0] == 0

    code, out, _ = run("ledger", "report")
    assert code == 0
    header, acme_line = out.splitlines()
    assert header.startswith("vendor\trequests\tapproved\tdenied")
    assert acme_line.split("\t")[:4] == ["Acme Security", "2", "1", "1"]

    code, out, _ = run("exceptions", "revoke", "4", "--key", reviewer, "--reason", "done")
    assert code == 0 and "revoked" in out
    assert [line.split("\t")[1] for line in run("exceptions", "list")[1].splitlines()] == [
        "revoked",
        "denied",
    ]


def test_an_exported_ledger_verifies_offline(
    run: Run, keys: dict[str, Path], set_up: Path, tmp_path: Path
) -> None:
    export = tmp_path / "published.json"
    export.write_text(run("ledger", "show", "--json")[1])
    args = parser().parse_args(["ledger", "verify", "--ledger", str(export),
                                "--root", HostKey.load(keys["owner"]).fingerprint()])  # fmt: skip
    assert args.policy_handler(args) == 0


def test_a_tampered_ledger_fails_verify_with_exit_1(
    run: Run, keys: dict[str, Path], set_up: Path, tmp_path: Path
) -> None:
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET payload = replace(payload, 'Review', 'Rogue') WHERE seq = 2")
    conn.close()
    code, _, err = run("ledger", "verify")
    assert (code, err.strip().split(": ", 2)[2]) == (
        1,
        "does not verify: entry 2: hash does not match its contents",
    )
    code, out, err = run("ledger", "show")
    assert code == 1 and len(out.splitlines()) == 1 and "entry 2" in err
    assert run("exceptions", "list")[0] == 2
    assert run("ledger", "report")[0] == 2


def test_errors_are_one_line_and_exit_2(
    run: Run, keys: dict[str, Path], set_up: Path, tmp_path: Path
) -> None:
    acme = str(keys["acme"])
    code, _, err = run("exceptions", "request", str(set_up), "--key", acme, "--expires", "soon")
    assert code == 2 and "--expires: 'soon' is not a date (YYYY-MM-DD)" in err
    code, _, err = run("exceptions", "request", str(set_up), "--key", acme,
                       "--expires", in_days(400))  # fmt: skip
    assert code == 2 and "more than 365 days away" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(MANIFEST.replace('helpers = ["bpf_get_current_pid_tgid"]', 'helpers = "all"'))
    code, _, err = run("exceptions", "request", str(bad), "--key", acme, "--expires", in_days(5))
    assert (
        code == 2
        and err == f"patchguard: {bad}:11: bpf_program[0].helpers: expected a list of strings\n"
    )
    code, _, err = run("exceptions", "approve", "4", "--key", str(tmp_path / "nokey"),
                       "--reason", "x")  # fmt: skip
    assert code == 2 and "cannot open the key file" in err
    code, _, err = run("ledger", "key-add", "abcd", "--owner", "X", "--key", str(keys["owner"]))
    assert code == 2 and "expected 64 hex digits" in err
    code, _, err = run("ledger", "max-expiry", "30", "--key", acme)
    assert code == 2 and "may not change policy" in err
    assert run("ledger", "verify")[0] == 0  # nothing refused was written


def test_max_expiry_and_key_show(run: Run, keys: dict[str, Path], set_up: Path) -> None:
    assert run("ledger", "max-expiry", "30", "--key", str(keys["owner"]))[0] == 0
    code, _, err = run("exceptions", "request", str(set_up), "--key", str(keys["acme"]),
                       "--expires", in_days(31))  # fmt: skip
    assert code == 2 and "more than 30 days away" in err
    code, out, _ = run("ledger", "key-show", "--key", str(keys["acme"]))
    key = HostKey.load(keys["acme"])
    assert out == f"fingerprint {key.fingerprint()}\npublic key {public_hex(keys['acme'])}\n"


def test_a_missing_ledger_is_an_error_not_an_empty_one(run: Run) -> None:
    code, _, err = run("ledger", "verify")
    assert code == 2 and "no ledger here" in err


def test_the_ledger_path_defaults_to_the_environment(
    keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.db"
    monkeypatch.setenv("PATCHGUARD_LEDGER", str(path))
    args = parser().parse_args(["ledger", "init", "--key", str(keys["owner"]), "--owner", "O"])
    assert args.policy_handler(args) == 0 and path.exists()
