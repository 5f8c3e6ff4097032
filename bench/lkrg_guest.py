"""Run INSIDE the lab guest by bench/lkrg.py: patchguard's check and the guard's sweep hashed in
the kernel, then LKRG's forced integrity check, in one boot. Writes <results>/lkrg_bench.json.

patchguard first (LKRG's kprobes would give check explained changes to name): the floor (every
baseline region read and SHA-256'd a page at a time through the memory reader), `verify` with
nothing changed, and the guard's sweep after its first (integrity/keyed_pages.py). Then
lkrg.ko is loaded and its check forced (`lkrg.trigger=1`) round after round: the time is the
kernel log's own clock from a marker this script writes to /dev/kmsg just before the trigger to
LKRG's "System is clean" (the check runs on a workqueue, so the write returns before it ends;
`lkrg.heartbeat=1` makes it say so; `kint_validate=1` and a 30-minute timer leave only the
checks we trigger). What that span holds, read in LKRG's source (p_check_integrity): kprobes
verified, every CPU's IDT/MSRs over IPI, each module's core text, _stext.._etext, rodata and
the exception table hashed with SipHash-2-4 under a random key, the module lists compared;
nothing is cached between checks. The "System is clean" line is printed at the end of the
kernel integrity part (the task checks after it are not hashing). The log's clock is measured
against CLOCK_MONOTONIC over 2 s (they agree in the lab), and each round is also timed with
perf_counter from the trigger's write to reading the record (this adds our wake-up).
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import json
import os
import pstats
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
PARTS = (("core_text", "core_text"), ("rodata", "rodata"), ("modules", "module_text."))


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
    regions = read_manifest(path, public).regions
    spans = [(e.start, e.size) for e in regions.values()]
    out: dict[str, float | int | str] = {"bytes": sum(s for _, s in spans)}
    out["reader"] = str(kernel.memory_reader)
    for name, group in PARTS:
        out[f"bytes_{name}"] = sum(e.size for n, e in regions.items() if n.startswith(group))
    out["floor_ms"] = median_ms(lambda: floor(kernel, spans))
    out["check_ms"] = median_ms(lambda: verify(kernel, path, public))
    keyed = KeyedPages.open(kernel)
    if keyed is not None:
        out["sweep_first_ms"] = median_ms(lambda: verify(kernel, path, public, keyed), 1)
        out["sweep_ms"] = median_ms(lambda: verify(kernel, path, public, keyed))
        out |= sweep_split(kernel, path, public, keyed)
        out["sweep_sha256_pages"] = keyed.counts.hashed
        out["sweep_rechecked_pages"] = keyed.counts.rechecked
        out["sweep_runs"] = keyed.counts.runs
        out |= sweep_parts(keyed)
        out["sweep_profile"] = profile(lambda: verify(kernel, path, public, keyed))
        keyed.close()
    kernel.close()
    return out


def sweep_split(kernel: Kernel, path: Path, public: bytes, keyed: KeyedPages) -> dict[str, float]:
    """More sweeps, each split as it ran: its time in BPF runs (counted inside the sweep) and
    the rest (Python, SHA-256 of the judged pages, /proc/modules, the manifest's checks)."""
    if getattr(keyed.counts, "kernel_seconds", None) is None:
        return {}
    times: dict[str, list[float]] = {"whole": [], "kernel": [], "rest": []}
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        verify(kernel, path, public, keyed)
        whole, in_kernel = time.perf_counter() - t0, keyed.counts.kernel_seconds
        times["whole"].append(whole)
        times["kernel"].append(in_kernel)
        times["rest"].append(whole - in_kernel)
    return {f"sweep_{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}


def sweep_parts(keyed: KeyedPages) -> dict[str, float]:
    """What of a sweep is the kernel's: its BPF runs alone (copy and NH), the runs copying
    only, and the SHA-256 of as many pages as the sweep judged; the rest is Python."""
    state = getattr(keyed, "_state", None)  # the plan the sweeps above used
    if state is None:
        return {}
    hasher, runs = keyed._hasher, state.plan.runs
    judged = keyed.counts.hashed + keyed.counts.rechecked
    page = bytes(hasher.copy(1))

    def bpf_runs(hash_pages: bool) -> None:
        for run in runs:
            hasher.run_table(run.table, run.ranges, run.pages if hash_pages else 0)

    return {
        "part_bpf_ms": median_ms(lambda: bpf_runs(True)),
        "part_copy_ms": median_ms(lambda: bpf_runs(False)),
        "part_sha256_ms": median_ms(lambda: [hashlib.sha256(page).digest() for _ in range(judged)]),
    }


def profile(fn: object, rounds: int = ROUNDS) -> str:
    """cProfile of `rounds` more calls (after the timed ones, so the profiler's own cost is in
    no time above): the functions that took the most time, own and with their callees."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(rounds):
        fn()  # type: ignore[operator]
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(35)
    return text.getvalue()


def kmsg_records(fd: int, timeout: float) -> Iterator[tuple[int, str, float]]:
    """(kernel log microseconds, text, perf_counter when read) of each record written to
    /dev/kmsg from now on; waits in poll(2), so the read time is the wake-up's."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not poller.poll(100):
            continue
        record = os.read(fd, 8192).decode(errors="replace")
        head, _, text = record.partition(";")
        yield int(head.split(",")[2]), text, time.perf_counter()
    raise TimeoutError(f"no kernel log record awaited within {timeout} s")


def stamp_of(fd: int, marker: str) -> tuple[int, float]:
    for stamp, text, read_at in kmsg_records(fd, 30):
        if marker in text:
            return stamp, read_at
    raise AssertionError("unreachable")


def kmsg_clock_rate(fd: int) -> float:
    """Kernel log seconds per perf_counter second over 2 s: the log stamps come from the
    scheduler clock, which under TCG may not run at the rate of CLOCK_MONOTONIC (what our
    own times use). 1.0 means the two clocks agree."""
    os.lseek(fd, 0, os.SEEK_END)
    t0 = time.perf_counter()
    os.write(fd, b"patchguard-bench clock 0")
    time.sleep(2)
    t1 = time.perf_counter()
    os.write(fd, b"patchguard-bench clock 1")
    first, _ = stamp_of(fd, "patchguard-bench clock 0")
    second, _ = stamp_of(fd, "patchguard-bench clock 1")
    return (second - first) / 1e6 / (t1 - t0)


def lkrg_round(fd: int, i: int) -> tuple[float, float]:
    """One forced check: (kernel log ms from the marker to "System is clean", perf_counter ms
    from just before the trigger's write to reading that record). The check runs on a
    workqueue, so the write returns before it ends; both spans hold all of it (kprobes
    verified, CPU state over IPI, every module's text, _stext.._etext, rodata and the
    exception table SipHash'd, the module lists compared), and the wall span adds our wake-up."""
    os.lseek(fd, 0, os.SEEK_END)
    marker = f"patchguard-bench lkrg round {i}"
    os.write(fd, marker.encode())
    t0 = time.perf_counter()
    Path("/proc/sys/lkrg/trigger").write_text("1\n")
    start = None
    for stamp, text, read_at in kmsg_records(fd, 30):
        if marker in text:
            start = stamp
        elif "System is clean" in text and start is not None:
            return (stamp - start) / 1e3, (read_at - t0) * 1e3
        elif "DETECT" in text:
            raise RuntimeError(f"LKRG found something: {text.strip()}")
    raise AssertionError("unreachable")


def lkrg_hashes() -> dict[str, int]:
    """Bytes of the core ranges LKRG's check SipHashes, from kallsyms (the modules' text is
    counted by our own baseline's module regions, the same ranges)."""
    addresses: dict[str, int] = {}
    for line in Path("/proc/kallsyms").read_text().splitlines():
        address, _, name = line.split()[:3]
        addresses.setdefault(name, int(address, 16))
    ranges = {
        "stext": ("_stext", "_etext"),
        "rodata": ("__start_rodata", "__end_rodata"),
        "ex_table": ("__start___ex_table", "__stop___ex_table"),
    }
    return {k: addresses.get(b, 0) - addresses.get(a, 0) for k, (a, b) in ranges.items()}


def lkrg() -> dict[str, object]:
    loaded = subprocess.run(["insmod", str(RESULTS / "lkrg.ko")], capture_output=True, text=True)
    if loaded.returncode != 0:
        return {"insmod": loaded.stderr}
    time.sleep(5)  # LKRG hashes the kernel once at load
    # only checks we trigger: no timer or event checks whose "System is clean" could end a
    # round early (kint_validate 1 = manual only; the forced check is the same code)
    Path("/proc/sys/lkrg/kint_validate").write_text("1\n")
    Path("/proc/sys/lkrg/heartbeat").write_text("1\n")  # "System is clean" after each check
    Path("/proc/sys/lkrg/interval").write_text("1800\n")  # no timed check between ours
    Path("/proc/sys/kernel/printk_devkmsg").write_text("on\n")  # no rate limit on our markers
    fd = os.open("/dev/kmsg", os.O_RDWR | os.O_NONBLOCK)
    try:
        rate = kmsg_clock_rate(fd)
        rounds = [lkrg_round(fd, i) for i in range(ROUNDS)]
    finally:
        os.close(fd)
    log_ms, wall_ms = [r[0] for r in rounds], [r[1] for r in rounds]
    return {
        "check_ms": statistics.median(log_ms),
        "rounds_ms": log_ms,
        "kmsg_clock_rate": rate,
        "check_log_ms_at_monotonic_rate": statistics.median(log_ms) / rate,
        "check_wall_ms": statistics.median(wall_ms),
        "wall_rounds_ms": wall_ms,
        "hashed_bytes": lkrg_hashes(),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, object] = {"patchguard": patchguard(Path(tmp))}
    result["lkrg"] = lkrg()
    (RESULTS / "lkrg_bench.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
