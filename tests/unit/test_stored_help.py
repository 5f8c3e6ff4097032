"""`patchguard --help` printed from stored_help.py, without argparse: the stored text must be
what argparse prints, and where it would print something else (another width, another Python)
argparse prints it. `-h --help` is not the bare `--help` the stored text answers, so argparse
renders it: the reference each process is compared with."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from patchguard import cli, stored_help

REGENERATE = ".venv/bin/python -c 'from patchguard.cli import store_help; store_help()'"


def test_the_stored_text_is_what_argparse_renders() -> None:
    if tuple(sys.version_info[:2]) != stored_help.PYTHON:
        assert cli._stored_help() is None  # another Python's argparse: never used here
        return
    assert cli.render_help(stored_help.COLUMNS) == stored_help.TEXT, f"run {REGENERATE}"


def help_of(*args: str, columns: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "patchguard.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("columns", [stored_help.COLUMNS, 57, 123])
@pytest.mark.parametrize("option", ["--help", "-h"])
def test_help_at_any_width_is_what_argparse_prints(option: str, columns: int) -> None:
    stored, rendered = help_of(option, columns=columns), help_of("-h", "--help", columns=columns)
    assert (stored.returncode, rendered.returncode) == (0, 0)
    assert stored.stdout == rendered.stdout
    assert stored.stdout.startswith("usage: patchguard") and "verify-report" in stored.stdout


def test_argparse_wraps_at_the_width_the_stored_text_is_chosen_by() -> None:
    # a width argparse does not wrap at would print a stored text argparse would not print
    wide, narrow = (help_of("-h", columns=c).stdout for c in (160, 50))
    assert wide != narrow
    assert max(map(len, narrow.splitlines())) < max(map(len, wide.splitlines()))


def test_a_help_text_that_is_not_printable_ascii_is_not_stored() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        cli._literals("usage: \x1b[31m\n")
    assert ast.literal_eval("(" + cli._literals('say "a\\b"\n' + "x" * 200) + ")") == (
        'say "a\\b"\n' + "x" * 200
    )
