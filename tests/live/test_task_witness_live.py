"""The witness for a pid neither memory structure has, on the running kernel.

No module can unlink a task here, so the unlinking is what the search is asked about: a real
child of this test, on the task list, is left out of the tasks the search starts from, and the
search must find it where the kernel really keeps it (this process's children list, its
cgroup's task list, its own struct pid), at the address the task-list walk read. With it left
in, nothing is off the list. The kernel's own lookups (pidfd_open, /proc/<pid>/stat) are asked
about a live child, a thread and a reaped child.

What can make a view show a pid nothing has here, without a rootkit? A task that exits between
the views' reads. The witness reads the views once more, last: a reaped child is shown by no
view then and is dropped, never called invented; a live child that memory has again is dropped
as a race too.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchguard.kernel import Kernel
from patchguard.kernel.bpf.current_task import current_task
from patchguard.kernel.pids import pidfd_finds, stat_file_reads
from patchguard.kernel.task_lists import CHILDREN, STRUCT_PID, off_list_tasks
from patchguard.kernel.tasks import MemTask, walk_tasks
from patchguard.surfaces.processes import (
    BPF_ITER,
    ITER_MAP,
    KILL,
    LISTING,
    MEMORY,
    NAME,
    PID_TABLE,
    STAT,
)
from patchguard.surfaces.processes.collect import (
    ProcessReading,
    collect_listings,
    probe_live,
    witness_off_both,
)

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]

VERDICT = ((LISTING, KILL, STAT), (BPF_ITER, ITER_MAP, MEMORY, PID_TABLE))


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()  # our own child, by its pid
        process.wait()


def reaped_pid() -> int:
    """A pid a child of ours had and no task has now (reaped; pids are handed out upward,
    so it is not reused within the test)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def tasks(kernel: Kernel) -> list[MemTask]:
    return walk_tasks(kernel.memory(), current_task(kernel.own_prog_ids), kernel.vmlinux_btf)


def test_a_task_left_out_is_found_where_the_kernel_keeps_it(
    kernel: Kernel, child: subprocess.Popen[bytes]
) -> None:
    walked = tasks(kernel)
    (mine,) = [t for t in walked if t.pid == child.pid]
    known = {t.address: t.pid for t in walked if t.pid != child.pid}
    found = off_list_tasks(kernel.memory(), kernel.vmlinux_btf, known, {child.pid})
    task = found[child.pid]
    assert task.task == mine.address
    assert CHILDREN.format(parent=os.getpid()) in task.places, task.places
    assert STRUCT_PID in task.places
    assert any(p.startswith("cgroup task list (css_set 0xff") for p in task.places), task.places


def test_a_task_on_the_walk_is_off_no_list(kernel: Kernel, child: subprocess.Popen[bytes]) -> None:
    known = {t.address: t.pid for t in tasks(kernel)}
    wanted = {child.pid, os.getpid(), reaped_pid()}
    assert off_list_tasks(kernel.memory(), kernel.vmlinux_btf, known, wanted) == {}


def test_the_kernels_own_lookups(child: subprocess.Popen[bytes]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(30,))
    thread.start()
    try:
        assert thread.native_id is not None
        assert pidfd_finds(child.pid) and stat_file_reads("/proc", child.pid)
        assert pidfd_finds(thread.native_id)  # EINVAL: found, but not a leader
    finally:
        stop.set()
        thread.join()
    gone = reaped_pid()
    assert not pidfd_finds(gone) and not stat_file_reads("/proc", gone)


def reading(kernel: Kernel) -> ProcessReading:
    """One collect's reading, whole, as the surface takes it."""
    r = ProcessReading(NAME, kernel)
    assert collect_listings(r)
    probe_live(r, int(Path("/proc/sys/kernel/pid_max").read_text()))
    assert MEMORY in r.views and PID_TABLE in r.views, r.gaps
    return r


def test_a_pid_that_exited_between_reads_is_not_called_invented(kernel: Kernel) -> None:
    """The views showed it (as they did while it ran); read once more, none does."""
    r = reading(kernel)
    gone = reaped_pid()
    assert witness_off_both(r, {gone: VERDICT}) == {}
    assert r.witnesses == {}


def test_a_pid_memory_has_again_is_a_race(kernel: Kernel, child: subprocess.Popen[bytes]) -> None:
    r = reading(kernel)
    assert witness_off_both(r, {child.pid: VERDICT}) == {}
    assert r.witnesses == {}


def test_a_pid_the_pid_table_shows_needs_no_witness(kernel: Kernel) -> None:
    r = reading(kernel)
    verdict = ((LISTING, KILL, STAT, PID_TABLE), (MEMORY,))
    assert witness_off_both(r, {os.getpid(): verdict}) == {os.getpid(): verdict}
    assert r.witnesses == {}
