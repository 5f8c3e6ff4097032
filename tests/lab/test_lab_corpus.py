"""The truth corpus in the lab guest (Debian's stock 6.1, with kprobes, and the netfilter hook
lists read from kernel memory): tests/live/test_corpus_live.py's bpftrace members (its kprobes
too) and its nftables member, in one boot. The guest has no clang and no perf: the tc and perf
members run only live."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.lab_guest import run_lab

pytestmark = pytest.mark.lab
MEMBERS = "bpftrace or nftables"


def test_corpus_members_in_the_lab_guest(tmp_path: Path) -> None:
    command = ["python3", "-m", "pytest", "/src/tests/live/test_corpus_live.py", "-k", MEMBERS]
    command += ["-q", "-p", "no:cacheprovider", "-rs"]
    run = run_lab(tmp_path, (), command, timeout=600, kaslr=False)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stdout[-6000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("3 passed") and "skipped" not in summary, run.stdout[-3000:]
