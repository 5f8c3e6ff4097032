"""Where the in-kernel page hash's time goes (kernel/bpf/text_hash.py), over the core text, in
one run: the 1 MiB copy alone (one bpf_probe_read_kernel per MiB, nothing hashed), NH under one
key and under two keys for each unroll factor (words hashed per turn of the page loop), and
the floor (read out through the memory reader and SHA-256 every page). Rounds interleave the
variants, so a change in the machine's load falls on each alike; each prints its CPU time
(this thread's, the kernel's work for it included: steadier than wall time on a loaded
machine) as the minimum and the median, and ns a byte at the minimum.
Run as root, here or in the lab guest (TCG):
  .venv/bin/python bench/text_hash.py [--rounds N] [--unroll 1,16,64]
  lab/run -- python3 bench/text_hash.py --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the guest has no venv

from patchguard.kernel import Kernel
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    R0,
    R1,
    R2,
    R3,
    R6,
    call,
    exit_insn,
    jgt_imm,
    ld_map_value,
    ldx_mem,
    mov64_imm,
)
from patchguard.kernel.bpf.insn import mov64_reg as mov
from patchguard.kernel.bpf.text_hash import (
    BPF_PROG_TYPE_RAW_TRACEPOINT,
    CHUNK,
    CHUNK_PAGES,
    PAGE,
    BPF_FUNC_probe_read_kernel,
    TextHasher,
)
from patchguard.kernel.memory import read_chunks


class CopyOnly:
    """The hash program's copy and nothing else: what the copy costs on its own."""

    def __init__(self) -> None:
        self.map_fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, CHUNK, 1, "pg_b_copy", 0)
        insns = [
            mov(R6, R1),
            ld_map_value(R1, self.map_fd, 0),
            ldx_mem(8, R2, R6, 8),
            mov64_imm(R0, -22),
            jgt_imm(R2, CHUNK, 2),  # bounds the size for the verifier
            ldx_mem(8, R3, R6, 0),
            call(BPF_FUNC_probe_read_kernel),
            exit_insn(),
        ]
        name = "pg_b_copy"
        self.prog_fd = bpf.prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, b"".join(insns), name)

    def copy_range(self, start: int, end: int) -> None:
        for at in range(start, end, CHUNK):
            size = min(CHUNK, end - at)
            ret = bpf.prog_test_run(self.prog_fd, struct.pack("<QQ", at, size))
            if ret != 0:
                raise OSError(-ret, f"copy of {size} bytes at {at:#x} failed")

    def close(self) -> None:
        os.close(self.prog_fd)
        os.close(self.map_fd)


def floor(kernel: Kernel, start: int, end: int) -> None:
    for _, chunk in read_chunks(kernel.memory(), start, end):
        view = memoryview(chunk)
        for i in range(0, len(chunk), PAGE):
            hashlib.sha256(view[i : i + PAGE]).digest()


def hashing(hasher: TextHasher, start: int, end: int, keys: int) -> Callable[[], None]:
    def run() -> None:
        hasher.keep_key() if keys == 1 else hasher.new_keys()
        for first in range(0, -(-(end - start) // PAGE), CHUNK_PAGES):
            pages = min(CHUNK_PAGES, -(-(end - start) // PAGE) - first)
            hasher.hash_chunk(start + first * PAGE, pages, 0)

    return run


def cpu_times(variants: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--unroll", default="1,16,64", help="unroll factors, comma-separated")
    args = parser.parse_args()
    kernel = Kernel()
    text = kernel.kallsyms.range("text")
    if text is None:
        sys.exit("kallsyms does not bound the core text")
    start, end = text.start, text.end
    copier = CopyOnly()
    hashers = {u: TextHasher(int(u)) for u in args.unroll.split(",")}
    try:
        variants: dict[str, Callable[[], None]] = {
            "copy only": lambda: copier.copy_range(start, end)
        }
        for u, hasher in hashers.items():
            variants[f"NH one key, unroll {u}"] = hashing(hasher, start, end, 1)
            variants[f"NH two keys, unroll {u}"] = hashing(hasher, start, end, 2)
        variants["floor: read out + SHA-256"] = lambda: floor(kernel, start, end)
        report(cpu_times(variants, args.rounds), end - start)
    finally:
        copier.close()
        for hasher in hashers.values():
            hasher.close()
        kernel.close()


def report(times: dict[str, list[float]], size: int) -> None:
    print(f"core text: {size / 1e6:.1f} MB; CPU ms (min / median), ns a byte at the min")
    base = min(times["floor: read out + SHA-256"])
    for name, xs in times.items():
        low = min(xs)
        print(
            f"{name:32} {low * 1e3:8.2f} / {statistics.median(xs) * 1e3:8.2f} ms "
            f"{low * 1e9 / size:6.2f} ns/B  {low / base:5.2f} x floor"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
