"""The kernel's taint as memory holds it: the global `tainted_mask`, and each module's own
`struct module.taints`, read through BTF and the memory reader.

A rootkit that loaded unsigned, out-of-tree code can set the global mask back to 0, and
/proc/sys/kernel/tainted then says the kernel is clean. It cannot as easily make every module
forget what it carries: `add_taint_module()` sets the bit in the module's own `taints` and in
the global mask, so a module bit the global mask lacks shows the mask was cleared.

`tainted_mask` is a static variable: kallsyms lists it only with CONFIG_KALLSYMS_ALL. Without
it, its address is read out of `get_taint()`, whose body is `return tainted_mask;` (its first
`mov reg, [rip+disp32]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_records import variable_address
from patchguard.kernel.memory import KernelMemory, read_u64
from patchguard.kernel.module_layout import MODULE_NAME_LEN, plausible_name

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

TAINT_BITS_KNOWN = 1 << 20  # TAINT_FLAGS_COUNT is 19-20 today: a larger value is a misread
GET_TAINT_CODE = 48


@dataclass(frozen=True)
class MemoryTaint:
    value: int
    source: str  # how tainted_mask was found


def tainted_mask_address(kernel: Kernel, memory: KernelMemory) -> tuple[int, str]:
    """(&tainted_mask, how it was found)."""
    name, reader = "tainted_mask", "get_taint"
    return variable_address(kernel, memory, name, reader, GET_TAINT_CODE, name)


def global_taint(kernel: Kernel) -> MemoryTaint:
    memory = kernel.memory()
    address, source = tainted_mask_address(kernel, memory)
    value = read_u64(memory, address)
    if value >= TAINT_BITS_KNOWN:
        raise KernelAccessError(source, f"implausible taint value {value:#x} at {address:#x}")
    return MemoryTaint(value, source)


def module_taint(memory: KernelMemory, name_at: int, taints_at: int, module: int, name: str) -> int:
    """struct module.taints of the module whose struct is at `module` (its name checked)."""
    if plausible_name(memory.read(module + name_at, MODULE_NAME_LEN)) != name:
        raise KernelAccessError(f"struct module of {name}", "its name field does not name it")
    value = read_u64(memory, module + taints_at)
    if value >= TAINT_BITS_KNOWN:
        raise KernelAccessError(f"struct module of {name}", f"implausible taints {value:#x}")
    return value
