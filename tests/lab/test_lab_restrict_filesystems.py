"""The truth corpus's RestrictFileSystems= member in the lab guest: Debian's stock 6.1 (its
LSMs include bpf) booted from the lab's trixie root image with trixie's systemd (257, built
+BPF_FRAMEWORK) as PID 1 (lab/run --root trixie --init systemd), running
tests/live/test_corpus_kernel_live.py's restrict-file-systems test: systemd's LSM program is
seen and named, quiet once systemd-restrictfs.toml is approved, a finding again past expiry.
Bookworm's systemd is built -BPF_FRAMEWORK and loads no LSM program, hence its own boot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.lab_guest import lab_build, run_lab

pytestmark = pytest.mark.lab
KERNEL = "/src/tests/live/test_corpus_kernel_live.py"


def test_restrict_file_systems_member_in_the_lab_guest(tmp_path: Path) -> None:
    if "trixie" not in lab_build():
        pytest.fail("this lab build has no trixie root image: run lab/build")
    command = ["python3", "-m", "pytest", KERNEL, "-k", "restrict_file_systems"]
    command += ["-q", "-p", "no:cacheprovider", "-rs", "--durations=0"]
    run = run_lab(tmp_path, (), command, timeout=1200, init="systemd", kaslr=False, root="trixie")
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stdout[-6000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 passed") and "skipped" not in summary, run.stdout
