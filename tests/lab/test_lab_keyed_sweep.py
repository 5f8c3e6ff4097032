"""The guard's sweeps hashed in the kernel (kernel/bpf/text_hash.py, integrity/keyed_pages.py)
on the lab's kernels: the verifier takes the program on Debian's 6.1 and 6.12 as on these
machines' 6.18, its digests are NH of the bytes the memory reader reads, and the sweep finds
each loaded module's struct module as check does, keeping where it is (these machines have no
modules: those cases skip here), and the memory reader's gathered reads work there. One boot
a kernel runs tests/live/test_text_hash_live.py and test_memory_live.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.lab_guest import run_lab

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("kernel", ["stock", "newer"])
def test_the_text_hash_live_tests_pass_in_the_guest(tmp_path: Path, kernel: str) -> None:
    tests = ["/src/tests/live/test_text_hash_live.py", "/src/tests/live/test_memory_live.py"]
    command = ["python3", "-m", "pytest", *tests, "-q"]
    command += ["-p", "no:cacheprovider", "-rs"]
    run = run_lab(tmp_path, (), command, timeout=600, kernel=kernel, kaslr=kernel != "stock")
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stdout[-4000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary
