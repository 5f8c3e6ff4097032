"""What the guard holds between its looks at the running kernel: none of what a look read.

A guard sweeps every few minutes and idles between; the kallsyms table a sweep parses is ~17
MiB of Python objects here, and its next look reads the table afresh anyway. These tests
hold the structure (nothing refers to the table once the look is over), not a number of
bytes: RSS depends on the host and the allocator, and bench/guard.py measures it."""

from __future__ import annotations

import gc
import io
import weakref
from pathlib import Path
from typing import Any

import pytest
from support.guard_in_process import in_process_guard

from patchguard.guard.config import parse_config
from patchguard.guard.daemon import Guard
from patchguard.kernel import Kernel
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.surfaces.base import SurfaceState

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


class KallsymsWitness:
    """A surface that asks the look's kernel handle for its kallsyms table, as kernel_text and
    tracing do, and keeps only a weak reference to it: the table dies once nobody else holds
    it."""

    name = "kallsyms_witness"
    title = "the kallsyms table of the look"

    def __init__(self) -> None:
        self.table: weakref.ref[SymbolTable] | None = None

    def collect(self, kernel: Kernel) -> SurfaceState[Any]:
        self.table = weakref.ref(kernel.kallsyms)
        return SurfaceState(self.name, ())

    def assess(self, state: SurfaceState[Any]) -> list[Any]:
        return []


def _guard(tmp_path: Path) -> Guard:
    text = (
        f'[guard]\nbaseline = ""\nspool = "{tmp_path / "spool"}"\n'
        f'key = "{tmp_path / "host.key"}"\nsweep_mean = 600\n'
    )
    return in_process_guard(parse_config(text, tmp_path / "guard.toml"), io.StringIO())


@pytest.mark.parametrize("why", ["sweep", "trigger:bpf"])
def test_a_look_keeps_no_kallsyms_table(tmp_path: Path, why: str) -> None:
    guard = _guard(tmp_path)
    witness = KallsymsWitness()
    try:
        # kernel_text and tracing name what they find through kallsyms: the guard's own looks
        looked = [guard.surfaces["kernel_text"], guard.surfaces["tracing"], witness]
        guard.collect(looked, why)  # type: ignore[list-item]
        gc.collect()
        assert witness.table is not None, "the look never asked for kallsyms"
        assert witness.table() is None, "something kept the look's kallsyms table"
    finally:
        guard.kernel.close()
