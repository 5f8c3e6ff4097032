"""Shared test set-up: the live-suite guard and the root/BPF facts of the machine."""

from __future__ import annotations

import errno
import os

import pytest

from patchguard.kernel.bpf import syscall as bpf


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-live",
        action="store_true",
        help="fail the run if the live suite did not run (a root machine with BPF must run it)",
    )


def bpf_usable() -> str | None:
    """None if bpf(2) answers here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        next(bpf.next_ids(bpf.BPF_PROG_GET_NEXT_ID, "PROG_GET_NEXT_ID"), None)
    except bpf.BpfError as exc:
        if exc.errno != errno.ENOENT:
            return str(exc)
    return None


def is_live(nodeid: str) -> bool:
    return "/live/" in nodeid or nodeid.startswith("live/")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not config.getoption("--require-live") or config.getoption("collectonly"):
        return
    if bpf_usable() is not None:
        return  # the machine truly cannot run them; each skip says why
    if not any(is_live(item.nodeid) for item in session.items):
        return  # none asked for (`scripts/test tests/unit`): nothing to require
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    passed = reporter.stats.get("passed", []) if reporter is not None else []
    if not any(is_live(r.nodeid) for r in passed):
        if reporter is not None:
            reporter.write_line(
                "FAILED: --require-live: this machine has root and BPF, but no live test passed",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def live_kernel() -> None:
    """Skip (saying why) where the kernel or user cannot run live tests."""
    why_not = bpf_usable()
    if why_not is not None:
        pytest.skip(f"live kernel tests need root and bpf(2): {why_not}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The kernel lab's boots of this run (issue: print boot-to-first-line and the lab suite's
    time in the CI log)."""
    from support.lab_guest import BOOTS

    if not BOOTS:
        return
    terminalreporter.section("kernel lab boots")
    for test, first_line, total in BOOTS:
        terminalreporter.write_line(
            f"{test}: boot to first line {first_line:.1f} s, boot to poweroff {total:.1f} s"
        )
    total = sum(t for _, _, t in BOOTS)
    terminalreporter.write_line(f"lab suite: {len(BOOTS)} boots, {total:.0f} s in the guest")
