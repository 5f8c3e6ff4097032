"""The entry surface on the running kernel. These machines have no msr module and no
idt_table in kallsyms: both must be reported unavailable with the reason (the QEMU lab,
which has both, checks the values)."""

from __future__ import annotations

import os

import pytest

from patchguard.kernel import Kernel
from patchguard.surfaces.entry import EntrySurface

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_entry_points_are_checked_or_said_unavailable() -> None:
    kernel = Kernel()
    try:
        state = EntrySurface().collect(kernel)
        has_idt = kernel.kallsyms.address_of("idt_table") is not None
    finally:
        kernel.close()
    reasons = {g.what: g.reason for g in state.gaps}
    if os.path.exists("/dev/cpu/0/msr") or os.path.isdir("/lib/modules"):
        values = state.records.msrs
        assert values and all(v.ok for v in values), values
    else:
        print("case: no msr device and no modules")
        assert "no loadable modules" in reasons["syscall entry MSRs"]
    if not has_idt:
        assert "CONFIG_KALLSYMS_ALL" in reasons["IDT"]
    assert EntrySurface().assess(state) == []
