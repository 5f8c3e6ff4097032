"""The `patchguard` command is bin/patchguard, a plain script (pyproject: script-files), not a
console-script entry point whose generated launcher imports `re`: `--version` and `--help`
import nothing beyond what Python itself starts with but patchguard's CLI and its stored help
(bench/cli.py measures them against `python3 -c pass`)."""

from __future__ import annotations

import json
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


FIXTURE = Path(__file__).parents[1] / "fixtures" / "6.18-fc"


@pytest.mark.parametrize("fail_on", ["critical", "low"])  # exit 0 and exit 1: both leave at once
def test_a_scan_leaves_at_once_with_its_whole_output_and_code(fail_on: str, tmp_path: Path) -> None:
    """The script ends a scan with os._exit (no finalization) once its output is flushed: the
    same exit code and the same (complete) JSON as the module run the ordinary way."""
    args = ["scan", "--root", str(FIXTURE), "--surface", "posture", "--json", "--records"]
    args += ["--fail-on", fail_on, "--ledger", str(tmp_path / "no-ledger.db")]
    env = {**os.environ, "PATCHGUARD_KEY": str(tmp_path / "no-host.key")}

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *command, *args], capture_output=True, text=True, env=env, timeout=60
        )

    script, module = run(str(SCRIPT)), run("-m", "patchguard.cli")
    assert script.returncode == module.returncode == (0 if fail_on == "critical" else 1)
    assert len(script.stdout) > 10_000 and script.stdout.endswith("}\n")

    def stable(out: str) -> dict[str, object]:
        # sealed with the time it was made: the seal and the timings differ run to run
        return {k: v for k, v in json.loads(out).items() if k in ("findings", "surfaces")}

    assert _untimed(stable(script.stdout)) == _untimed(stable(module.stdout))


def _untimed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value
