"""The truth corpus in the lab guest (Debian's stock 6.1, with modules, kprobes, fentry and the
netfilter hook lists read from kernel memory), in one boot with systemd as PID 1 (lab/run
--init systemd): tests/live/test_corpus_live.py's bpftrace members (its kprobes too),
libbpf-tools' runqlat (raw tracepoints) and its nftables member, and
tests/live/test_corpus_kernel_live.py's members: a live patch (pg_klp_version, built here
against the lab's headers), classic tc classifiers and a systemd unit's cgroup firewall and
device filter. The guest has no clang and no perf: the tc BPF and perf members run only
live. The fentry member boots on its own, so it can be run alone. Past expiry, each member's
BPF programs (runqlat's, the systemd unit's, bpftrace's) are one exception-lapsed each, naming
the exception (support.corpus.lapsed_named), beside what scan says of them with no ledger.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.lab_guest import lab_build, run_lab

pytestmark = pytest.mark.lab
LIVE = "/src/tests/live/test_corpus_live.py"
KERNEL = "/src/tests/live/test_corpus_kernel_live.py"
MEMBERS = "(bpftrace and not fentry) or runqlat or nftables or livepatch or classic or systemd"
# bpftrace: sre-probes, kprobes; runqlat; nftables; livepatch; classic tc; systemd
PASSED = 7


def test_corpus_members_in_the_lab_guest(tmp_path: Path) -> None:
    command = ["env", "PATCHGUARD_CORPUS_MODULES=/results", "python3", "-m", "pytest"]
    command += [LIVE, KERNEL, "-k", MEMBERS, "-q", "-p", "no:cacheprovider", "-rs", "--durations=0"]
    run = run_lab(tmp_path, ("pg_klp_version",), command, timeout=2400, init="systemd", kaslr=False)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stdout[-6000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{PASSED} passed") and "skipped" not in summary, run.stdout


@pytest.mark.parametrize("kernel", ["stock", "newer"])
def test_fentry_member_in_the_lab_guest(tmp_path: Path, kernel: str) -> None:
    """bpftrace's kfunc and kretfunc on vfs_read (BPF trampolines, which these kernels allow):
    its own boot, without systemd, so it can be run alone; on 6.1 and on 6.12 (IBT: the ftrace
    site after vfs_read's sealed ENDBR64). Its vfs_read ftrace hook is allowed and named by the
    trampoline's program ids once approved, check names them as the site's owner, and it is a
    finding again past expiry (test_corpus_live.named_by_programs)."""
    if kernel == "newer" and "newer" not in lab_build():
        pytest.skip("this lab build has no newer kernel: the archive offered no 6.12 to lab/build")
    command = ["python3", "-m", "pytest", LIVE, "-k", "bpftrace and fentry"]
    command += ["-q", "-p", "no:cacheprovider", "-rs"]
    run = run_lab(tmp_path, (), command, timeout=1200, kernel=kernel, kaslr=kernel == "newer")
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stdout[-6000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 passed") and "skipped" not in summary, run.stdout
