"""Asking the running kernel for symbol addresses (kernel_lookup): the same answers as
/proc/kallsyms, without reading it."""

from __future__ import annotations

import pytest

from patchguard.kernel import Kernel
from patchguard.kernel.bpf.lookup import symbol_address

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_addresses_agree_with_kallsyms(kernel: Kernel) -> None:
    names = ["_stext", "_etext", "entry_SYSCALL_64", "do_sys_openat2", "__start_rodata"]
    for name in names:
        assert symbol_address(name) == kernel.kallsyms.address_of(name), name
    assert symbol_address("patchguard_no_such_symbol") is None


def test_text_range_without_reading_kallsyms() -> None:
    kernel = Kernel()
    try:
        text = kernel.range("text")
        assert kernel._kallsyms is None  # answered by the kernel: kallsyms was not read
        assert text == kernel.kallsyms.range("text")
    finally:
        kernel.close()


def test_lookup_programs_are_our_own(kernel: Kernel) -> None:
    """The programs the lookups load are listed as ours, so a scan beside them leaves them
    out, and they are gone once answered."""
    owned: list[int] = []
    assert symbol_address("_stext", own=owned.append) is not None
    assert len(owned) == 1
    from support.bpfprogs import wait_gone

    assert wait_gone(owned[0])


def test_a_range_the_kernel_has_no_symbols_for_is_not_searched_for() -> None:
    """Where the kernel's lookup finds no start marker (no CONFIG_KALLSYMS_ALL: no rodata
    markers), /proc/kallsyms, which prints the same table, has none either: the range is
    absent without reading it; where it finds them, the range is the one kallsyms gives."""
    kernel = Kernel()
    try:
        rodata = kernel.range("rodata")
        if symbol_address("__start_rodata") is None:
            assert rodata is None and kernel._kallsyms is None
        assert rodata == kernel.kallsyms.range("rodata")
    finally:
        kernel.close()
