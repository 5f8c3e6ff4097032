"""The syscall dispatch surface on the running kernel: every dispatch jump resolved and
leading to a syscall function in core text."""

from __future__ import annotations

import pytest

from patchguard.kernel import Kernel
from patchguard.surfaces.syscalls import SyscallsSurface

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_dispatch_is_resolved_and_clean() -> None:
    kernel = Kernel()
    try:
        state = SyscallsSurface().collect(kernel)
        code_dispatch = kernel.kallsyms.address_of("x64_sys_call") is not None
    finally:
        kernel.close()
    targets = state.records
    assert SyscallsSurface().assess(state) == []
    if code_dispatch:
        x64 = {t.lo: t.target_name for t in targets if t.via == "x64_sys_call" and t.lo == t.hi}
        assert x64[62] == "__x64_sys_kill" and x64[217] == "__x64_sys_getdents64"
        assert len(x64) > 350
    else:
        assert any(t.via == "sys_call_table" for t in targets)
    assert all(t.ok for t in targets)
