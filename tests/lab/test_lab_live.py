"""The live suite, inside the lab guest (Debian's stock 6.1 kernel, KASLR on): what these
machines' kernel cannot show is proven there for real. In the guest /proc/kcore is readable,
kallsyms has sys_call_table and idt_table, `modprobe msr` gives the syscall entry MSRs, module
BTF exists and fentry programs load; the same tests then check those values instead of
reporting them unavailable. One boot runs them all (software emulation: about 2 minutes),
less the baseline-file cases that never reach the kernel (NOT_IN_GUEST: run on the host)."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest
from support.lab_guest import lab_build, run_lab

pytestmark = pytest.mark.lab

# The live tests whose assertions hold on any kernel (they branch on what it has). Left out:
# posture and the CLI output (they assert this host's settings) and the guard (its 2 s
# detection bound is for real hardware, not for a guest under software emulation).
IN_GUEST = (
    "test_syscalls_live.py",
    "test_entry_live.py",
    "test_check_live.py",
    "test_memory_live.py",
    "test_text_hash_live.py",
    "test_kcore_live.py",
    "test_btf_live.py",
    "test_tracing_live.py",
    "test_modules_live.py",
    "test_ebpf_live.py",
    "test_fentry_live.py",
    "test_processes_live.py",
    "test_netfilter_live.py",
    "test_shipped_manifests_live.py",
)
# Proven on the host, and not rerun in the guest: what a tampered, foreign or missing baseline
# file does to `check` is decided from the file before the kernel is read, and each of these
# six cases costs a baseline capture and a check under software emulation, on both kernels.
NOT_IN_GUEST = (
    "test_check_live.py::test_tampered_baseline_is_refused",
    "test_check_live.py::test_baseline_of_another_boot_is_refused",
    "test_check_live.py::test_missing_baseline_is_one_clear_line",
)
DESELECTED = 6  # the tampered baseline is four cases
# Cases that skip on these machines (no modules) and must run in the guest, which has them.
MUST_RUN = ("test_sweeps_find_every_module_as_check_does_and_keep_where_they_are",)


def live_suite(tmp_path: Path, kernel: str) -> dict[str, str]:
    """Run the live suite in one boot of `kernel`; the cases the tests said they took (their
    "case" user properties, through pytest's JUnit XML), by test name."""
    tests = [f"/src/tests/live/{name}" for name in IN_GUEST]
    command = ["python3", "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", "-rs"]
    command += ["--junitxml=/results/live.xml", "-o", "junit_family=xunit1"]
    for test in NOT_IN_GUEST:  # node ids as pytest names them: from the rootdir, /src
        command += ["--deselect", f"tests/live/{test}"]
    run = run_lab(tmp_path, (), command, timeout=900, kernel=kernel)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stdout[-4000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    assert f"{DESELECTED} deselected" in summary, summary
    cases: dict[str, str] = {}
    tests_run = list(ElementTree.parse(tmp_path / "live.xml").iter("testcase"))
    skipped = {t.get("name", "") for t in tests_run if t.find("skipped") is not None}
    assert not skipped.intersection(MUST_RUN), sorted(skipped.intersection(MUST_RUN))
    for testcase in tests_run:
        for prop in testcase.iter("property"):
            if prop.get("name") == "case":
                cases[testcase.get("name", "")] = prop.get("value", "")
    return cases


def test_live_suite_passes_in_the_lab_guest(tmp_path: Path) -> None:
    lab_build()
    live_suite(tmp_path, "stock")


def test_live_suite_passes_on_the_newer_kernel(tmp_path: Path) -> None:
    """Bookworm's 6.12: module text from struct module's mem[] (6.4+), ftrace sites after
    ENDBR64 (IBT built in), BPF netfilter links, and the nfnetlink hook dump that 6.1 lacks."""
    if "newer" not in lab_build():
        pytest.skip("this lab build has no newer kernel: the archive offered no 6.12 to lab/build")
    cases = live_suite(tmp_path, "newer")
    dump = cases.get("test_hook_dump_works_or_is_a_gap_with_the_kernels_answer", "")
    assert dump.startswith("nfnetlink hook dump works"), cases
