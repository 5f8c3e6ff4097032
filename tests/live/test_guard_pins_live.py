"""The running guard and what it holds on to: a baseline re-created without a request is
critical on every sink (also after a restart, from its signed state), and one rotated through
`patchguard baseline rotate` is taken and announced; its own code, run from a throwaway copy of
the venv this test builds, reports a swapped .pyc and an edited dependency file as critical."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.guard_process import Guard, write_config
from support.receiver import Receiver

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
VENV = Path(sys.prefix)
SRC = Path(__file__).parents[2] / "src" / "patchguard"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def technique(name: str) -> Any:
    return lambda b: (b.get("finding") or {}).get("technique") == name


def test_a_recreated_baseline_is_critical_and_a_rotated_one_is_announced(
    tmp_path: Path, receiver: Receiver
) -> None:
    from patchguard.signing import HostKey

    HostKey.load_or_create(tmp_path / "host.key")
    baseline = tmp_path / "baseline.zip"
    baseline.write_bytes(b"the first baseline")
    body = f'baseline = "{baseline}"\nledger = ""\nsweep_mean = 1\nsweep_jitter = 0\n'
    config = write_config(tmp_path, body, receiver.url)
    g = Guard(config)
    try:
        g.event("sweep")
        baseline.write_bytes(b"a baseline re-created behind the guard's back")
        replaced = receiver.wait_for(technique("baseline-replaced"), 15)
        assert replaced is not None and replaced["finding"]["severity"] == "critical"
        assert g.terminate()[0] == 0
        g = Guard(config)  # a restart does not take the new file: the pin is in its state
        again = receiver.wait_for(
            lambda b: technique("baseline-replaced")(b) and b is not replaced, 30
        )
        assert again is not None and again["finding"]["severity"] == "critical"
        words = ["baseline", "rotate", "--config", str(config), "--reason", "kernel 6.9 installed"]
        rotate = subprocess.run(
            [sys.executable, "-m", "patchguard.cli", *words],
            capture_output=True,
            text=True,
            check=False,
        )
        assert rotate.returncode == 0, rotate.stderr
        rotated = receiver.wait_for(lambda b: b.get("event") == "baseline-rotated", 15)
        assert rotated is not None and rotated["reason"] == "kernel 6.9 installed"
        assert rotated["from"] == replaced["finding"]["evidence"]["pinned"]
        assert rotated["to"] == replaced["finding"]["evidence"]["now"]
        baseline.write_bytes(b"and again, without a request")
        third = receiver.wait_for(
            lambda b: (
                technique("baseline-replaced")(b)
                and b["finding"]["evidence"]["pinned"] == rotated["to"]
            ),
            15,
        )
        assert third is not None, "the rotated baseline is the pin now"
    finally:
        g.terminate()
        g.kill()


# --- the guard's own code, in a throwaway copy of the venv ------------------------------------


@pytest.fixture(scope="module")
def venv_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This venv, its files hard-linked (every edit below replaces a file, so the shared venv
    is never written), with patchguard copied in instead of the editable install."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    shutil.copytree(VENV, root, symlinks=True, copy_function=os.link)
    site = next(root.glob("lib/python3*/site-packages"))
    for editable in site.glob("__editable__*patchguard*"):
        editable.unlink()
    shutil.copytree(SRC, site / "patchguard", ignore=shutil.ignore_patterns("__pycache__"))
    python = root / "bin" / "python"
    subprocess.run(
        [python, "-c", "import compileall, patchguard, pathlib; "
         "compileall.compile_dir(pathlib.Path(patchguard.__file__).parent, quiet=1)"],
        check=True,
    )  # fmt: skip
    return root


def replace_file(path: Path, data: bytes) -> None:
    """A new file renamed over the old one: a hard link into the shared venv stays intact."""
    fresh = path.with_name(path.name + ".pg-test")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def run_copy(root: Path, tmp: Path, receiver: Receiver) -> Guard:
    body = 'baseline = ""\nledger = ""\nsweep_mean = 1\nsweep_jitter = 0\n'
    g = Guard(write_config(tmp, body, receiver.url), python=str(root / "bin" / "python"))
    started = g.event("start")
    assert started["version"], "".join(g.stderr)
    g.event("sweep")
    return g


def test_a_swapped_pyc_is_critical(venv_copy: Path, tmp_path: Path, receiver: Receiver) -> None:
    package = next(venv_copy.glob("lib/python3*/site-packages/patchguard"))
    cached = next((package / "guard" / "__pycache__").glob("responses.*.pyc"))
    original = cached.read_bytes()
    g = run_copy(venv_copy, tmp_path, receiver)
    try:
        replace_file(cached, original[:16] + b"swapped code object")
        found = receiver.wait_for(technique("guard-files-changed"), 15)
    finally:
        g.terminate()
        g.kill()
        replace_file(cached, original)  # the copy is used again by the next test
    assert found is not None and found["finding"]["severity"] == "critical"
    assert str(cached) in found["finding"]["evidence"]["files"]


def test_an_edited_dependency_is_critical(
    venv_copy: Path, tmp_path: Path, receiver: Receiver
) -> None:
    site = next(venv_copy.glob("lib/python3*/site-packages"))
    edited = site / "cryptography" / "__about__.py"
    g = run_copy(venv_copy, tmp_path, receiver)
    try:
        replace_file(edited, edited.read_bytes() + b"\n# a line slipped in\n")
        found = receiver.wait_for(technique("guard-files-changed"), 15)
    finally:
        g.terminate()
        g.kill()
    assert found is not None and found["finding"]["severity"] == "critical"
    assert str(edited) in found["finding"]["evidence"]["files"]
