"""Run INSIDE the lab guest by bench/lkrg.py: patchguard's check and the guard's sweep hashed in
the kernel, then LKRG's forced integrity check, in one boot. Writes <results>/lkrg_bench.json.

patchguard first (LKRG's kprobes would give check explained changes to name): the floor (every
baseline region read and SHA-256'd a page at a time through the memory reader), `verify` with
nothing changed, and the guard's sweep after its first (integrity/keyed_pages.py). Then
lkrg.ko is loaded and its check forced (`lkrg.trigger=1`) round after round: the time is the
kernel log's own clock from a marker this script writes to /dev/kmsg just before the trigger to
LKRG's "System is clean" (the check runs on a workqueue, so the write returns before it ends;
`lkrg.heartbeat=1` makes it say so, and its timer is set to 30 minutes so only ours run).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "/src/src")

from patchguard.integrity.check import capture, verify
from patchguard.integrity.keyed_pages import KeyedPages
from patchguard.integrity.store import read_manifest, save_baseline
from patchguard.kernel import Kernel
from patchguard.kernel.memory import read_chunks
from patchguard.signing import HostKey

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else "/results")
ROUNDS = 12


def median_ms(fn: object, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def floor(kernel: Kernel, spans: list[tuple[int, int]]) -> None:
    for start, size in spans:
        for _, chunk in read_chunks(kernel.memory(), start, start + size):
            view = memoryview(chunk)
            for i in range(0, len(chunk), 4096):
                hashlib.sha256(view[i : i + 4096]).digest()


def patchguard(tmp: Path) -> dict[str, float | int | str]:
    kernel = Kernel()
    key = HostKey.load_or_create(tmp / "host.key")
    path = tmp / "baseline.zip"
    save_baseline(capture(kernel).baseline, path, key)
    public = key.public_key_bytes()
    spans = [(e.start, e.size) for e in read_manifest(path, public).regions.values()]
    out: dict[str, float | int | str] = {"bytes": sum(s for _, s in spans)}
    out["reader"] = kernel.memory_reader
    out["floor_ms"] = median_ms(lambda: floor(kernel, spans))
    out["check_ms"] = median_ms(lambda: verify(kernel, path, public))
    keyed = KeyedPages.open(kernel)
    if keyed is not None:
        out["sweep_first_ms"] = median_ms(lambda: verify(kernel, path, public, keyed), 1)
        out["sweep_ms"] = median_ms(lambda: verify(kernel, path, public, keyed))
        out["sweep_sha256_pages"] = keyed.counts.hashed
        keyed.close()
    kernel.close()
    return out


def kmsg_time(fd: int, marker: str, until: str, timeout: float = 30) -> float:
    """Microseconds of kernel log time from the record holding `marker` to the one holding
    `until`."""
    start, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = os.read(fd, 8192).decode(errors="replace")
        except BlockingIOError:
            time.sleep(0.001)
            continue
        head, _, text = record.partition(";")
        stamp = int(head.split(",")[2])
        if marker in text:
            start = stamp
        elif until in text and start is not None:
            return (stamp - start) / 1e3
    raise TimeoutError(f"no {until!r} within {timeout} s")


def lkrg() -> dict[str, object]:
    loaded = subprocess.run(["insmod", str(RESULTS / "lkrg.ko")], capture_output=True, text=True)
    if loaded.returncode != 0:
        return {"insmod": loaded.stderr}
    time.sleep(5)  # LKRG hashes the kernel once at load
    Path("/proc/sys/lkrg/heartbeat").write_text("1\n")  # "System is clean" after each check
    Path("/proc/sys/lkrg/interval").write_text("1800\n")  # no timed check between ours
    Path("/proc/sys/kernel/printk_devkmsg").write_text("on\n")  # no rate limit on our markers
    fd = os.open("/dev/kmsg", os.O_RDWR | os.O_NONBLOCK)
    times = []
    try:
        for i in range(ROUNDS):
            os.lseek(fd, 0, os.SEEK_END)
            marker = f"patchguard-bench lkrg round {i}"
            os.write(fd, marker.encode())
            Path("/proc/sys/lkrg/trigger").write_text("1\n")
            times.append(kmsg_time(fd, marker, "System is clean"))
    finally:
        os.close(fd)
    return {"check_ms": statistics.median(times), "rounds_ms": times}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, object] = {"patchguard": patchguard(Path(tmp))}
    result["lkrg"] = lkrg()
    (RESULTS / "lkrg_bench.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
