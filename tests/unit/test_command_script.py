"""The `patchguard` command is bin/patchguard, a plain script (pyproject: script-files), not a
console-script entry point whose generated launcher imports `re`: `--version` and `--help`
import nothing beyond what Python itself starts with but patchguard's CLI and its stored help
(bench/cli.py measures them against `python3 -c pass`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bin" / "patchguard"
INSTALLED = Path(sys.executable).with_name("patchguard")


def imported(*argv: str) -> tuple[set[str], str]:
    """(modules imported, stdout) of `python -X importtime *argv`, at help's stored width."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=60,
        check=True,
    )
    lines = [x for x in done.stderr.splitlines() if x.startswith("import time:")]
    return {x.rsplit("|", 1)[1].strip() for x in lines[1:]}, done.stdout


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_the_command_imports_only_the_cli_beyond_pythons_start(option: str) -> None:
    python, _ = imported("-c", "pass")
    names, out = imported(str(SCRIPT), option)
    assert out.startswith("patchguard" if option == "--version" else "usage: patchguard")
    extra = names - python
    assert not extra & {"re", "argparse", "typing", "pathlib"}
    assert {n for n in extra if n.startswith("patchguard")} <= {
        "patchguard",
        "patchguard.cli",
        "patchguard.stored_help",
    }


def test_the_installed_command_is_the_script() -> None:
    if not INSTALLED.exists():
        pytest.skip(f"no {INSTALLED}: patchguard is not installed beside this Python")
    installed, script = INSTALLED.read_text().splitlines(), SCRIPT.read_text().splitlines()
    assert installed[0].startswith("#!") and installed[1:] == script[1:]
