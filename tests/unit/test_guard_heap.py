"""The guard's heap policy (guard/heap.py), held to what glibc does with it: a MiB buffer made
after another was freed is its own mapping (given back when freed) only with the fixed
threshold. Each case runs in a fresh interpreter, as a threshold set once stays for the
process."""

from __future__ import annotations

import subprocess
import sys

import pytest

MIB = 1 << 20
# Bytes glibc serves from their own mmaps (mallinfo2's hblkhd) after a MiB buffer was made and
# freed and a second one made.
PROGRAM = """
import ctypes, sys
from patchguard.guard.heap import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
fixed = fix_mmap_threshold() if sys.argv[1] == "fixed" else None
first = bytes(1 << 20)
del first
second = bytearray(1 << 20)
print(fixed, mallinfo2().hblkhd)
"""


def _mapped_after_a_free(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.fixture(scope="module")
def glibc() -> None:
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("not glibc 2.33+ (no mallinfo2)")


@pytest.mark.usefixtures("glibc")
def test_a_fixed_threshold_maps_each_big_buffer_after_one_was_freed() -> None:
    said, fixed = _mapped_after_a_free("fixed")
    _, dynamic = _mapped_after_a_free("dynamic")
    assert said == "True"
    # the second MiB is its own mapping only under the fixed threshold
    assert fixed - dynamic >= MIB
