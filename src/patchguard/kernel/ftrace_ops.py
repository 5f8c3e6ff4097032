"""Every registered ftrace_ops, read from kernel memory: the list at `ftrace_ops_list` (a static
variable: found with ftrace_records.variable_address, from the first load of
ftrace_ops_trampoline(), which walks it), each `struct ftrace_ops` with its handler (`func`),
its flags, and the functions its filter hash holds (`func_hash->filter_hash`, a hash of
`struct ftrace_func_entry` { ip, direct }): which functions each ops traces, and for a direct
ops (BPF trampolines) where each one's site calls, and (6.6+) the `direct_call` the ops itself
holds, which call_direct_funcs follows where other ftrace users share the site.

This is the ground truth that tracefs `enabled_functions` prints from; a function memory's ops
trace that the text does not show is a filtered view. Offsets come from vmlinux BTF.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_records import variable_address
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u64

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

MAX_OPS = 4096  # registered ops: a few per tracer, one per BPF trampoline
MAX_ENTRIES = 1 << 17  # functions one filter hash may hold (more than a kernel has)
MAX_SIZE_BITS = 16  # FTRACE_HASH_MAX_BITS is 12; a larger table is a misread
OPS_CODE = 64  # bytes of ftrace_ops_trampoline() searched for its first load

# enum FTRACE_OPS_FL_* (include/linux/ftrace.h), stable since 5.x for these bits.
FLAG_NAMES = (
    "ENABLED",
    "DYNAMIC",
    "SAVE_REGS",
    "SAVE_REGS_IF_SUPPORTED",
    "RECURSION",
    "STUB",
    "INITIALIZED",
    "DELETED",
    "ADDING",
    "REMOVING",
    "MODIFYING",
    "ALLOC_TRAMP",
    "IPMODIFY",
    "PID",
    "RCU",
    "TRACE_ARRAY",
    "PERMANENT",
    "DIRECT",
    "SUBOP",
    "GRAPH",
)
ENABLED, STUB, DIRECT = 1 << 0, 1 << 5, 1 << 17


@dataclass(frozen=True)
class OpsLayout:
    func: int
    next: int
    flags: int
    func_hash: int
    trampoline: int
    filter_hash: int
    size_bits: int
    buckets: int
    count: int
    ip: int
    direct: int
    direct_call: int | None = None  # ftrace_ops.direct_call, 6.6+


def layout(btf: Btf) -> OpsLayout:
    wanted = (
        ("ftrace_ops", "func"),
        ("ftrace_ops", "next"),
        ("ftrace_ops", "flags"),
        ("ftrace_ops", "func_hash"),
        ("ftrace_ops", "trampoline"),
        ("ftrace_ops_hash", "filter_hash"),
        ("ftrace_hash", "size_bits"),
        ("ftrace_hash", "buckets"),
        ("ftrace_hash", "count"),
        ("ftrace_func_entry", "ip"),
        ("ftrace_func_entry", "direct"),
    )
    found = [btf.member_offset(s, m) for s, m in wanted]
    missing = [f"{s}.{m}" for (s, m), at in zip(wanted, found, strict=True) if at is None]
    if missing:
        raise KernelAccessError("vmlinux BTF", f"no {', '.join(missing)} (no ftrace)")
    direct_call = btf.member_offset("ftrace_ops", "direct_call")
    return replace(OpsLayout(*(at for at in found if at is not None)), direct_call=direct_call)


@dataclass(frozen=True)
class FtraceOps:
    """One registered struct ftrace_ops."""

    address: int
    func: int  # the handler every traced function's site reaches
    flags: int
    trampoline: int  # its own trampoline (0: the shared ftrace_caller)
    # ip -> direct-call target (0 for an ops without direct calls) of each filter-hash entry;
    # empty with `all_functions`: the ops traces every function (the hash is empty)
    traced: dict[int, int]
    all_functions: bool
    # a DIRECT ops' own target (6.6+): call_direct_funcs calls it where the site is shared
    direct_call: int | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.flags & ENABLED)

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(n for bit, n in enumerate(FLAG_NAMES) if self.flags & (1 << bit))


def list_head(kernel: Kernel, memory: KernelMemory) -> tuple[int, str]:
    """(&ftrace_ops_list, how it was found)."""
    reader = "ftrace_ops_trampoline"
    return variable_address(kernel, memory, "ftrace_ops_list", reader, OPS_CODE, "ftrace ops")


def read_ops(memory: KernelMemory, head: int, at: OpsLayout) -> list[FtraceOps]:
    """Every ops on the list whose head pointer is at `head`, but ftrace_list_end (the STUB
    that ends it)."""
    found: list[FtraceOps] = []
    op = read_u64(memory, head)
    while op:
        if op < KERNEL_SPACE or len(found) > MAX_OPS:
            raise KernelAccessError(f"ftrace_ops_list at {head:#x}", f"implausible ops {op:#x}")
        flags = read_u64(memory, op + at.flags)
        if not flags & STUB:
            found.append(_ops(memory, op, flags, at))
        op = read_u64(memory, op + at.next)
    return found


def _ops(memory: KernelMemory, op: int, flags: int, at: OpsLayout) -> FtraceOps:
    func_hash = read_u64(memory, op + at.func_hash)
    hash_ = read_u64(memory, func_hash + at.filter_hash) if func_hash >= KERNEL_SPACE else 0
    traced = filter_entries(memory, hash_, at) if hash_ >= KERNEL_SPACE else {}
    func, tramp = read_u64(memory, op + at.func), read_u64(memory, op + at.trampoline)
    return FtraceOps(
        op, func, flags, tramp, traced, not traced, ops_direct_call(memory, op, flags, at)
    )


def ops_direct_call(memory: KernelMemory, op: int, flags: int, at: OpsLayout) -> int | None:
    """The direct_call of a DIRECT ops, where the kernel has the field (6.6+); else None."""
    if at.direct_call is None or not flags & DIRECT:
        return None
    return read_u64(memory, op + at.direct_call)


def filter_entries(memory: KernelMemory, hash_: int, at: OpsLayout) -> dict[int, int]:
    """ip -> direct of every struct ftrace_func_entry in the ftrace_hash at `hash_`."""
    bits, count = read_u64(memory, hash_ + at.size_bits), read_u64(memory, hash_ + at.count)
    if bits > MAX_SIZE_BITS or count > MAX_ENTRIES:
        raise KernelAccessError(f"ftrace_hash {hash_:#x}", f"{bits} bits, {count} entries")
    if not count:
        return {}
    buckets = read_u64(memory, hash_ + at.buckets)
    heads = memory.read(buckets, 8 << bits)
    found: dict[int, int] = {}
    for i in range(1 << bits):
        entry = int.from_bytes(heads[8 * i : 8 * i + 8], "little")
        while entry:
            if entry < KERNEL_SPACE or len(found) > count:
                raise KernelAccessError(f"ftrace_hash {hash_:#x}", f"bad entry {entry:#x}")
            found[read_u64(memory, entry + at.ip)] = read_u64(memory, entry + at.direct)
            entry = read_u64(memory, entry)  # hlist_node.next, its first member
    return found


def direct_functions(kernel: Kernel, memory: KernelMemory, at: OpsLayout) -> dict[int, int]:
    """ip -> direct-call target of every function with a direct call: ftrace's own
    `direct_functions` hash, which modify_ftrace_direct() keeps current (an ops' filter hash
    keeps the target it was registered with). Found from ftrace_find_rec_direct()'s first
    load, the hash's pointer."""
    where, _ = variable_address(
        kernel, memory, "direct_functions", "ftrace_find_rec_direct", OPS_CODE, "ftrace"
    )
    hash_ = read_u64(memory, where)
    return filter_entries(memory, hash_, at) if hash_ >= KERNEL_SPACE else {}
