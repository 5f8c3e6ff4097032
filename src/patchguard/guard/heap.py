"""How the guard's C heap gives memory back: a long-lived process whose sweeps read MiB-sized
buffers (kernel text, kallsyms) every few minutes.

glibc serves a block above M_MMAP_THRESHOLD (128 KiB) with its own mmap and unmaps it when
freed, but raises that threshold to the size of each such block freed (the "dynamic
threshold"). After the first sweep's 1 MiB reads are freed, every later one comes from the
heaps of the threads that read them, and those heaps keep the sweep's peak: measured here,
35 MiB of a guard's RSS after one sweep (107 against 72 MiB). A fixed threshold (mallopt)
turns the dynamic one off, so each big buffer is unmapped when freed and the guard's RSS
between sweeps is what it holds. The price is the page faults of each new mapping: the guard
with it used 739 against 701 ms of CPU a sweep (bench/guard.py --sweeps 30, load 7.7), for a
sweep every few minutes.
MALLOC_MMAP_THRESHOLD_ in the environment does the same, but only for a process started with
it; this holds however the guard is started.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's own default, kept, only no longer raised


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at its default; False where the C library has no mallopt
    (musl) or refuses it (then the guard runs as before, holding more between sweeps)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
