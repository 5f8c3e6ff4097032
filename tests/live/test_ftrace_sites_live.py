"""ftrace's own records and the baseline-free ftrace-site check on the running kernel."""

from __future__ import annotations

import pytest

from patchguard.kernel import Kernel
from patchguard.kernel.ftrace_records import layout, site_addresses
from patchguard.kernel.memory import read_chunks
from patchguard.surfaces.ftrace_sites import check_sites, record_list

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_every_record_is_a_functions_entry_holding_no_jmp(kernel: Kernel) -> None:
    memory, text = kernel.memory(), kernel.range("text")
    assert text is not None
    code = b"".join(chunk for _, chunk in read_chunks(memory, text.start, text.end))
    head, _ = record_list(kernel, memory)
    found = check_sites(kernel, memory, code, text.start)
    assert found.sites > 10000, found  # a distribution kernel traces tens of thousands
    names = kernel.attributor()
    sites = site_addresses(memory, head, layout(kernel.vmlinux_btf))
    for site in sites[:: max(1, len(sites) // 500)]:
        loc = names.lookup(site)
        # the call site is a text symbol's first bytes, after ENDBR64 under IBT
        assert loc is not None and loc.symbol.is_text and loc.offset in (0, 4), hex(site)
    # a clean kernel never holds a JMP at a function's ftrace site
    assert not [h for h in found.hooks if h.code.startswith(("e9", "eb"))], found.hooks
