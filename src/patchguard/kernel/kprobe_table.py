"""Who registered each kprobe: the handlers in the kernel's own `kprobe_table`, read from
kernel memory. debugfs kprobes/list names the probed address only; the function that runs
there, and so the module that registered it, is in `struct kprobe`.

`kprobe_table` is an array of hlist heads (KPROBE_TABLE_SIZE, 64); each node is the `hlist`
of a `struct kprobe` (its first member). Several kprobes on one address hang off an
aggregate probe (pre_handler `aggr_pre_handler`) on its `list`. A kretprobe's kprobe has
pre_handler `pre_handler_kretprobe`; its own handlers are in the `struct kretprobe` around it.
Offsets come from vmlinux BTF; `kprobe_table` is a data symbol (CONFIG_KALLSYMS_ALL).
"""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u64

TABLE_SIZE = 64  # KPROBE_TABLE_SIZE: 1 << KPROBE_HASH_BITS (6)
MAX_PROBES = 10_000  # a walk longer than this is not a kprobe list: stop, do not read on


@dataclass(frozen=True)
class KprobeHandler:
    address: int  # the probed address (kp->addr)
    handler: int  # the registering code's function: pre_handler, or a kretprobe's handler
    kind: str  # "kprobe" or "kretprobe"


@dataclass(frozen=True)
class Layout:
    hlist: int
    list: int
    addr: int
    pre_handler: int
    post_handler: int
    # None on kernels without kretprobes (CONFIG_KRETPROBES off: no struct kretprobe)
    kretprobe_kp: int | None
    kretprobe_handler: int | None
    kretprobe_entry: int | None


def layout(btf: Btf) -> Layout:
    need = btf.required_offset

    return Layout(
        hlist=need("kprobe", "hlist"),
        list=need("kprobe", "list"),
        addr=need("kprobe", "addr"),
        pre_handler=need("kprobe", "pre_handler"),
        post_handler=need("kprobe", "post_handler"),
        kretprobe_kp=btf.member_offset("kretprobe", "kp"),
        kretprobe_handler=btf.member_offset("kretprobe", "handler"),
        kretprobe_entry=btf.member_offset("kretprobe", "entry_handler"),
    )


class _Walk:
    def __init__(self, memory: KernelMemory, symbols: SymbolTable, offsets: Layout) -> None:
        self.memory, self.offsets = memory, offsets
        self.aggr = symbols.address_of("aggr_pre_handler")
        self.kretprobe = symbols.address_of("pre_handler_kretprobe")
        self.found: list[KprobeHandler] = []
        self.steps = 0

    def u64(self, address: int) -> int:
        self.steps += 1
        if self.steps > MAX_PROBES or address < KERNEL_SPACE:
            raise KernelAccessError("kprobe_table", f"implausible list at {address:#x}")
        return read_u64(self.memory, address)

    def bucket(self, head: int) -> None:
        node = self.u64(head)
        while node:
            self.probe(node - self.offsets.hlist)
            node = self.u64(node)  # hlist_node.next is its first member

    def probe(self, kp: int) -> None:
        o = self.offsets
        pre = self.u64(kp + o.pre_handler)
        if pre and pre == self.aggr:  # several kprobes on one address: each on kp->list
            head = kp + o.list
            entry = self.u64(head)
            while entry != head:
                self.probe(entry - o.list)
                entry = self.u64(entry)
            return
        address = self.u64(kp + o.addr)
        if pre and pre == self.kretprobe:
            self.found.append(KprobeHandler(address, self.kretprobe_handler(kp, pre), "kretprobe"))
            return
        handler = pre or self.u64(kp + o.post_handler)
        self.found.append(KprobeHandler(address, handler, "kprobe"))

    def kretprobe_handler(self, kp: int, pre: int) -> int:
        o = self.offsets
        if o.kretprobe_kp is None or o.kretprobe_handler is None or o.kretprobe_entry is None:
            return pre
        rp = kp - o.kretprobe_kp
        return self.u64(rp + o.kretprobe_handler) or self.u64(rp + o.kretprobe_entry)


def read_handlers(memory: KernelMemory, symbols: SymbolTable, btf: Btf) -> list[KprobeHandler]:
    """The handler of every registered kprobe and kretprobe."""
    table = symbols.address_of("kprobe_table")
    if table is None:
        raise KernelAccessError(
            "/proc/kallsyms",
            "no kprobe_table: this kernel lists no data symbols (CONFIG_KALLSYMS_ALL off)",
        )
    walk = _Walk(memory, symbols, layout(btf))
    for bucket in range(TABLE_SIZE):
        walk.bucket(table + 8 * bucket)
    return walk.found
