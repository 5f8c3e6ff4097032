"""BTF of the running kernel: /sys/kernel/btf/vmlinux and any module BTF beside it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from patchguard.kernel.btf import Btf

pytestmark = pytest.mark.live

BTF_DIR = Path("/sys/kernel/btf")
VMLINUX = BTF_DIR / "vmlinux"


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    if not VMLINUX.exists():
        pytest.skip("this kernel exports no BTF (CONFIG_DEBUG_INFO_BTF is off)")
    return Btf.load(VMLINUX)


def test_vmlinux_loads_fast() -> None:
    if not VMLINUX.exists():
        pytest.skip("this kernel exports no BTF (CONFIG_DEBUG_INFO_BTF is off)")
    started = time.perf_counter()
    btf = Btf.load(VMLINUX)
    elapsed = time.perf_counter() - started
    print(f"Btf.load({VMLINUX}): {len(btf)} types in {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0  # about 20 ms on the 6.18 VM; generous for slow CI machines


def test_syscall_function_round_trips(vmlinux: Btf) -> None:
    type_id = vmlinux.func_id("__x64_sys_kill")
    assert type_id is not None
    assert vmlinux.kind(type_id) == "FUNC"
    assert vmlinux.func_name(type_id) == "__x64_sys_kill"
    assert vmlinux.name(type_id) == "__x64_sys_kill"


def test_known_function_exists(vmlinux: Btf) -> None:
    type_id = vmlinux.func_id("do_sys_openat2")
    assert type_id is not None and vmlinux.kind(type_id) == "FUNC"


def test_bogus_name_is_none(vmlinux: Btf) -> None:
    assert vmlinux.func_id("patchguard_no_such_function") is None


def test_module_btf_splits_on_vmlinux(vmlinux: Btf) -> None:
    modules = sorted(p for p in BTF_DIR.iterdir() if p.name != "vmlinux")
    if not modules:
        pytest.skip("only vmlinux BTF here: no module exports BTF on this kernel")
    for path in modules:
        btf = Btf.load(path, base=vmlinux)
        assert btf.start_id == vmlinux.end_id, path
        for type_id in range(btf.start_id, btf.end_id):
            btf.kind(type_id)
            btf.name(type_id)  # every name_off resolves, in the module or in vmlinux


def test_kernel_finder_agrees_with_the_file(vmlinux: Btf) -> None:
    """The kernel's own lookup (a syscall program calling bpf_btf_find_by_name_kind) names
    the same types as a search of /sys/kernel/btf/vmlinux; the file is not walked for it."""
    from patchguard.kernel.bpf.lookup import find_by_name_kind
    from patchguard.kernel.btf import BTF_KIND_FUNC, BTF_KIND_STRUCT

    asked = [
        ("bpf_iter_task", BTF_KIND_FUNC),
        ("__x64_sys_kill", BTF_KIND_FUNC),
        ("task_struct", BTF_KIND_STRUCT),
        ("bpf_iter_task", BTF_KIND_STRUCT),  # a name that is a FUNC only
        ("patchguard_no_such_type", BTF_KIND_FUNC),
    ]
    for name, kind in asked:
        assert find_by_name_kind(name, kind) == vmlinux._named(name, kind), name
    found = Btf.load(VMLINUX, finder=find_by_name_kind)
    assert found.func_id("bpf_iter_task") == vmlinux.func_id("bpf_iter_task")
    assert found.struct_id("task_struct") == vmlinux.struct_id("task_struct")
    assert found.member_offset("task_struct", "pid") == vmlinux.member_offset("task_struct", "pid")
    walked = len(found._walk.offsets)
    assert walked < len(vmlinux) // 10, f"walked {walked} of {len(vmlinux)} types"
