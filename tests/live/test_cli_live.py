"""`patchguard scan` end to end on the running kernel: output, exit codes, and as a user
without root (no traceback, and the reasons say root is needed)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from typing import Any

import pytest

from patchguard.cli import main

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
NOBODY = 65534


def run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "patchguard.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_scan_prints_surfaces_findings_and_gaps() -> None:
    out = run("scan")
    assert out.returncode in (0, 1), out.stderr
    for title in (
        "Security posture",
        "Kernel text",
        "eBPF programs and links",
        "ftrace, kprobes and",
        "Loadable modules",
    ):
        assert title in out.stdout
    assert "memory reader: ebpf" in out.stdout
    # this kernel denies enabled_functions and has no modules: said, not passed silently
    assert "Could not be checked" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_exit_codes_follow_fail_on() -> None:
    doc = json.loads(run("scan", "--json", "--surface", "posture").stdout)
    worst = max((f["severity"] for f in doc["findings"]), key=SEVERITIES.index, default=None)
    assert worst is not None, "these machines have posture findings (kptr_restrict=0)"
    assert run("scan", "--surface", "posture", "--fail-on", worst).returncode == 1
    above = SEVERITIES[SEVERITIES.index(worst) + 1] if worst != "critical" else None
    if above:
        assert run("scan", "--surface", "posture", "--fail-on", above).returncode == 0


SEVERITIES = ["info", "low", "medium", "high", "critical"]


@pytest.mark.parametrize(
    "args,message",
    [
        (("scan", "--fail-on", "bogus"), "unknown severity 'bogus'"),
        (("scan", "--surface", "nope"), "unknown surface nope"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _scan_as_nobody() -> tuple[int, str, str]:
    """Fork, drop to nobody, run `scan --json` in-process (the interpreter may live where
    nobody cannot exec it), and return (exit code, stdout, stderr)."""
    # One scan as root first, so every module the child needs is already imported: the
    # standard library may lie where nobody cannot read it (a pyenv under /root).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["scan", "--json"])
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 2
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["scan", "--json"])
            os.write(w_out, out.getvalue().encode())
            os.write(w_err, err.getvalue().encode())
        except BaseException as exc:  # report anything, never return into pytest
            os.write(w_err, f"child failed: {exc!r}\n{traceback.format_exc()}".encode())
        finally:
            os._exit(code)
    os.close(w_out)
    os.close(w_err)
    with os.fdopen(r_out) as fo, os.fdopen(r_err) as fe:
        stdout, stderr = fo.read(), fe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr


def test_scan_without_root_says_what_needs_root() -> None:
    code, stdout, stderr = _scan_as_nobody()
    # Most surfaces need root: a run that could read few of them must not read as clean.
    assert code == 2, stderr
    assert "not running as root" in stderr and "Traceback" not in stderr
    assert "surfaces could not be read" in stderr and "not a clean result" in stderr
    doc: dict[str, Any] = json.loads(stdout)
    gaps = {(g["surface"], g["what"]): g["reason"] for g in doc["unavailable"]}
    assert "kptr_restrict" in gaps[("kernel_text", "core text")]
    status = {s["name"]: s["status"] for s in doc["surfaces"]}
    assert status["ebpf"] == "unavailable" and status["kernel_text"] == "unavailable"
