"""Capture the task list and the pid table of the running kernel as a fixture: every read the
memory walks make (address and bytes), where they started, the tasks and pids they found, and
the other process views taken at the same moment. Run as root on the kernel to capture:

    .venv/bin/python tests/support/capture_tasks.py tests/fixtures/6.18-fc/tasks.json.gz
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

from patchguard.kernel import Kernel
from patchguard.kernel.bpf.current_task import current_task
from patchguard.kernel.bpf.iterators import TaskIterator
from patchguard.kernel.memory import KernelMemory
from patchguard.kernel.pid_table import pid_table
from patchguard.kernel.pids import answering
from patchguard.kernel.tasks import walk_tasks
from patchguard.surfaces.processes import pids_in_listing


class Recording:
    """The live reader, keeping what each read returned."""

    name = "recording"

    def __init__(self, memory: KernelMemory) -> None:
        self.memory = memory
        self.reads: dict[int, bytes] = {}

    def read(self, address: int, size: int) -> bytes:
        data = self.memory.read(address, size)
        self.reads[address] = data
        return data

    def close(self) -> None:
        pass


def _listing(path: str) -> list[int]:
    try:
        return sorted(pids_in_listing(os.listdir(path)))
    except FileNotFoundError:  # exited since /proc was listed
        return []


def capture() -> dict[str, object]:
    kernel = Kernel()
    recording = Recording(kernel.memory())
    start = current_task()
    tasks = walk_tasks(recording, start, kernel.vmlinux_btf)
    table = pid_table(recording, start, kernel.vmlinux_btf)
    listed = _listing("/proc")
    threads = sorted({t for p in listed for t in _listing(f"/proc/{p}/task")})
    with TaskIterator.open(kernel.vmlinux_btf) as iterator:
        walk = iterator.walk()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return {
        "kernel": os.uname().release,
        "start": start,
        "reads": {f"{a:#x}": data.hex() for a, data in sorted(recording.reads.items())},
        "tasks": [[t.pid, t.tgid, t.comm, t.address] for t in tasks],
        "pid_table": sorted([nr, task] for nr, task in table.items()),
        "views": {
            "proc_listing": listed,
            "task_listing": threads,
            "kill": sorted(answering(range(1, pid_max))),
            "bpf_task_iter": sorted(t.pid for t in walk.read),
            "bpf_task_iter_map": sorted(t.pid for _, t in walk.copied),
        },
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.write_bytes(gzip.compress(json.dumps(capture()).encode(), mtime=0))
    print(f"captured {out}")
