"""The netfilter hook lists read straight from kernel memory, for kernels without the
nfnetlink hook dump (CONFIG_NETFILTER_NETLINK_HOOK is off in Debian's 6.1 and on these VMs).

Every network namespace (the `net_namespace_list`, through `struct net.list`) holds
`net->nf.hooks_{ipv4,ipv6,arp,bridge}[hooknum]`, each a `struct nf_hook_entries *`:

    u16 num_hook_entries; ... struct nf_hook_entry hooks[num];   /* {nf_hookfn *hook, priv} */
    struct nf_hook_ops *orig_ops[num];                           /* right after hooks[] */

The priority is the registering `struct nf_hook_ops`'s. Offsets come from vmlinux BTF, the
list head from kallsyms (a data symbol: kernels built without CONFIG_KALLSYMS_ALL cannot be
read this way, and say so). Reads go through the kernel-memory reader, which tolerates a list
freed under it (RCU) by failing the read, never by faulting.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32

# net->nf member, protocol family (enum NFPROTO_*), number of hook lists.
HOOK_ARRAYS = (("hooks_ipv4", 2, 5), ("hooks_ipv6", 10, 5), ("hooks_arp", 3, 3))
BRIDGE = ("hooks_bridge", 7, 5)
ENTRY_SIZE = 16  # struct nf_hook_entry: two pointers
MAX_ENTRIES = 1024  # a list longer than this is not a hook list: stop, do not read on
MAX_NAMESPACES = 4096


@dataclass(frozen=True)
class HookEntry:
    """One function on one hook list of one network namespace."""

    netns: int | None  # the namespace's inode number (ls -l /proc/<pid>/ns/net)
    pf: int
    hooknum: int
    priority: int | None  # None: the ops could not be read
    hook: int  # the function's address


@dataclass(frozen=True)
class Layout:
    net_list: int
    net_nf: int
    net_inum: int | None
    arrays: tuple[tuple[int, int, int], ...]  # (offset in struct net, pf, lists)
    entries_hooks: int
    ops_priority: int


def layout(btf: Btf) -> Layout:
    """The offsets this kernel's BTF gives; KernelAccessError naming what is missing."""

    need = btf.required_offset

    nf = need("net", "nf")
    ns = btf.member_offset("net", "ns")
    inum = btf.member_offset("ns_common", "inum")
    arrays = [
        (nf + offset, pf, lists)
        for member, pf, lists in (*HOOK_ARRAYS, BRIDGE)
        if (offset := btf.member_offset("netns_nf", member)) is not None
    ]
    if not arrays:
        raise KernelAccessError("vmlinux BTF", "no hook lists in struct netns_nf")
    return Layout(
        net_list=need("net", "list"),
        net_nf=nf,
        net_inum=None if ns is None or inum is None else ns + inum,
        arrays=tuple(arrays),
        entries_hooks=need("nf_hook_entries", "hooks"),
        ops_priority=need("nf_hook_ops", "priority"),
    )


def _u64s(memory: KernelMemory, address: int, count: int) -> tuple[int, ...]:
    return struct.unpack(f"<{count}Q", memory.read(address, 8 * count))


def namespaces(memory: KernelMemory, head: int, offsets: Layout) -> list[int]:
    """The address of every struct net on the list at `head`."""
    found: list[int] = []
    node = _u64s(memory, head, 1)[0]
    while node != head:
        if node < KERNEL_SPACE or len(found) >= MAX_NAMESPACES:
            raise KernelAccessError("net_namespace_list", f"implausible link {node:#x}")
        found.append(node - offsets.net_list)
        node = _u64s(memory, node, 1)[0]
    return found


def list_entries(
    memory: KernelMemory, entries: int, offsets: Layout
) -> list[tuple[int, int | None]]:
    """(hook function, priority) of each entry of one `struct nf_hook_entries`."""
    (count,) = struct.unpack("<H", memory.read(entries, 2))
    if count > MAX_ENTRIES:
        raise KernelAccessError(f"nf_hook_entries at {entries:#x}", f"implausible count {count}")
    if count == 0:
        return []
    hooks_at = entries + offsets.entries_hooks
    words = _u64s(memory, hooks_at, 2 * count + count)  # hooks[] then orig_ops[]
    functions, ops = words[0 : 2 * count : 2], words[2 * count :]
    return [(fn, _priority(memory, o, offsets)) for fn, o in zip(functions, ops, strict=True)]


def _priority(memory: KernelMemory, ops: int, offsets: Layout) -> int | None:
    if ops < KERNEL_SPACE:
        return None
    try:
        return int(struct.unpack("<i", memory.read(ops + offsets.ops_priority, 4))[0])
    except KernelAccessError:
        return None


def read_hooks(memory: KernelMemory, head: int | None, btf: Btf) -> list[HookEntry]:
    """Every hook of every network namespace, read from kernel memory; `head` is the address
    of net_namespace_list (None: kallsyms does not know it)."""
    if head is None:
        raise KernelAccessError(
            "kallsyms",
            "no net_namespace_list: this kernel lists no data symbols (CONFIG_KALLSYMS_ALL off)",
        )
    offsets = layout(btf)
    found: list[HookEntry] = []
    for net in namespaces(memory, head, offsets):
        inum = None
        if offsets.net_inum is not None:
            inum = read_u32(memory, net + offsets.net_inum)
        for at, pf, lists in offsets.arrays:
            for hooknum, entries in enumerate(_u64s(memory, net + at, lists)):
                if entries < KERNEL_SPACE:
                    continue  # NULL: nothing registered on that hook
                found += [
                    HookEntry(inum, pf, hooknum, priority, fn)
                    for fn, priority in list_entries(memory, entries, offsets)
                ]
    return found
