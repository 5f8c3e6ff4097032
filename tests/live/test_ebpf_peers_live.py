"""Two patchguard processes at once: each scan shows the other's readers, iterators and lookups
as patchguard's (one info finding, `patchguard-object`), never as the host's, while a program
named like patchguard's that is not patchguard's own stays the host's: one this test holds
(its process is not patchguard), and one a fake `patchguard.cli` holds (its command line says
patchguard; its bytecode is not patchguard's, so its tag differs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import bpfprogs as bp

from patchguard.findings import Finding, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.bpf import syscall as bpf
from patchguard.scan import run_scan
from patchguard.surfaces import all_surfaces
from patchguard.surfaces.ebpf import BpfProgram

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
SOCKET_FILTER = 1  # BPF_PROG_TYPE_SOCKET_FILTER: loads anywhere, runs nowhere
# What a scan loads (the guard's own pg_guard_wake is not: its shipped manifest covers it)
SCAN_PROGRAMS = {
    "pg_kmem_read", "pg_task_iter", "pg_symbolize", "pg_btf_find", "pg_ksym_addr",
    "pg_fd_iter", "pg_tcp_iter", "pg_udp_iter", "pg_unix_iter",
}  # fmt: skip
SCANS = 6  # our scans while the other patchguard scans back to back
# An impostor: its command line ends in `-m patchguard.cli` (anyone can write that), and it
# holds a program named like patchguard's reader whose bytecode is not the reader's.
IMPOSTOR = """
import sys, time
sys.path.insert(0, sys.argv[1])
from support import bpfprogs as bp
fd = bp.bpf.prog_load(1, bp.return_zero(), "pg_kmem_read")  # a socket filter
print("loaded", flush=True)
time.sleep(120)
"""


def ebpf_records(kernel: Kernel) -> tuple[list[BpfProgram], list[Finding]]:
    """One full scan in this process (so its own readers and iterators are loaded): the ebpf
    surface's programs, and its findings."""
    report = run_scan(kernel, all_surfaces())
    (ebpf,) = [r for r in report.results if r.surface.name == "ebpf"]
    programs = list(ebpf.state.records.programs)
    return programs, list(ebpf.findings)


@pytest.fixture
def other_patchguard() -> Iterator[subprocess.Popen[bytes]]:
    """Another patchguard process, scanning back to back (a shell loop of `patchguard scan`):
    its programs come and go while ours run."""
    loop = f"while :; do {sys.executable} -m patchguard.cli scan --json >/dev/null 2>&1; done"
    shell = subprocess.Popen(["bash", "-c", loop], start_new_session=True)
    try:
        time.sleep(2)
        yield shell
    finally:
        os.killpg(shell.pid, 15)
        shell.wait(timeout=60)


def test_another_patchguard_process_objects_are_patchguards(
    other_patchguard: subprocess.Popen[bytes],
) -> None:
    kernel = Kernel()
    seen: list[BpfProgram] = []
    try:
        for _ in range(SCANS):
            programs, findings = ebpf_records(kernel)
            theirs = [p for p in programs if p.patchguard_pid is not None]
            seen += theirs
            for prog in theirs:
                mine = [f for f in findings if f.evidence.get("prog_id") == prog.prog_id]
                assert [f.technique for f in mine] == ["patchguard-object"], mine
                assert mine[0].severity == Severity.INFO
                assert f"pid {prog.patchguard_pid}" in mine[0].summary
            # a program a patchguard process holds is never listed as the host's
            held = [p for p in programs if p.name in SCAN_PROGRAMS and p.patchguard_pid is None]
            for prog in held:
                assert not _held_by_scans(prog), prog
    finally:
        kernel.close()
    assert seen, f"in {SCANS} scans, the other patchguard's objects were never seen"
    assert {p.name for p in seen} <= SCAN_PROGRAMS


def _held_by_scans(prog: BpfProgram) -> bool:
    """Whether every process holding `prog` is one of the other scans: this checkout's Python
    running `-m patchguard.cli` (another checkout's patchguard, of other code, may load other
    bytes under the same names: those stay the host's, by design)."""
    ours = f"{sys.executable}\0-m\0patchguard.cli\0".encode()
    return bool(prog.owners) and all(_cmdline(o.pid).startswith(ours) for o in prog.owners)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # gone: it holds nothing now


def test_a_program_named_like_patchguards_stays_the_hosts() -> None:
    tests = str(Path(__file__).resolve().parents[1])
    impostor = subprocess.Popen(
        [sys.executable, "-c", IMPOSTOR, tests, "-m", "patchguard.cli"], stdout=subprocess.PIPE
    )
    ours = bpf.prog_load(SOCKET_FILTER, bp.return_zero(), "pg_symbolize")
    kernel = Kernel()
    try:
        assert impostor.stdout is not None and impostor.stdout.readline() == b"loaded\n"
        programs, findings = ebpf_records(kernel)
    finally:
        kernel.close()
        os.close(ours)
        impostor.kill()
        impostor.wait()
    by_holder = {o.pid: p for p in programs for o in p.owners}
    for pid in (impostor.pid, os.getpid()):
        prog = by_holder.get(pid)
        assert prog is not None and prog.name in ("pg_kmem_read", "pg_symbolize"), programs
        assert prog.patchguard_pid is None, prog
        techniques = {f.technique for f in findings if f.evidence.get("prog_id") == prog.prog_id}
        assert "patchguard-object" not in techniques
