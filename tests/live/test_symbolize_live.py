"""The kernel names addresses (%pS through bpf_snprintf) the way /proc/kallsyms does."""

from __future__ import annotations

import pytest

from patchguard.kernel import Kernel
from patchguard.kernel.bpf.lookup import find_by_name_kind, symbol_address
from patchguard.kernel.bpf.symbolize import BATCH, Symbolizer
from patchguard.surfaces.syscalls import SyscallNames, read_dispatch

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_names_agree_with_kallsyms(kernel: Kernel) -> None:
    syms = kernel.kallsyms
    text = syms.range("text")
    assert text is not None
    core = [s for s in syms.symbols if s.address in text and s.module is None]
    sample = core[:: max(1, len(core) // 300)]
    asked = {s.address for s in sample} | {s.address + 5 for s in sample}
    symbolizer = kernel.symbolizer()
    assert symbolizer is not None, "the kernel does not name addresses here"
    named = symbolizer.names(asked)
    assert len(asked) > 3 * BATCH  # several runs of the program
    for address in sorted(asked):
        loc = syms.lookup(address)
        assert loc is not None
        name = named.get(address)
        assert name is not None, hex(address)
        # kallsyms lists aliases; the kernel names one of them
        aliases = {s.name for s in syms.at(address - loc.offset)}
        assert (name.name in aliases, name.offset, name.module) == (True, loc.offset, None), name
        following = syms.next_address(address - loc.offset)
        assert following is None or address - loc.offset + name.size <= following


def test_what_no_symbol_covers_is_not_named(kernel: Kernel) -> None:
    symbolizer = kernel.symbolizer()
    assert symbolizer is not None
    assert symbolizer.names([0x10, 0xFFFF800000000000]) == {}


def test_its_program_is_ours_and_goes_with_it() -> None:
    owned: list[int] = []
    symbolizer = Symbolizer.open(own=owned.append)
    symbolizer.close()
    from support.bpfprogs import wait_gone

    assert len(owned) == 1 and wait_gone(owned[0])


def test_syscall_dispatch_the_same_with_kallsyms_names(kernel: Kernel) -> None:
    """The syscalls surface names its targets through the kernel; where the kernel cannot,
    through kallsyms: the same syscalls, and every target a syscall function either way."""
    by_kernel = read_dispatch(kernel, SyscallNames(kernel))
    fallback = Kernel()
    fallback._symbolizer_failed = True
    fallback._refused |= {symbol_address, find_by_name_kind}
    try:
        by_kallsyms = read_dispatch(fallback, SyscallNames(fallback))
    finally:
        fallback.close()
    assert len(by_kernel) > 300
    key = [(t.via, t.lo, t.hi, t.address, t.target, t.ok) for t in by_kernel]
    assert key == [(t.via, t.lo, t.hi, t.address, t.target, t.ok) for t in by_kallsyms]
    assert all(t.ok for t in by_kernel)
