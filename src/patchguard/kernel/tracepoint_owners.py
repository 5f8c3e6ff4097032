"""What a tracepoint probe's data names: the BPF program behind a raw tracepoint probe, and the
BPF programs a perf trace event runs, read from kernel memory through vmlinux BTF.

A raw tracepoint's probe (`__bpf_trace_<class>`, which calls bpf_trace_runN) gets a
`struct bpf_raw_tp_link *` as data from 6.10 on and the `struct bpf_prog *` before; each is
taken only where the program it leads to is a program (its aux points back at it), so the
kernel version need not be guessed. A perf probe (`perf_trace_<class>`) gets the event's
`struct trace_event_call *`, whose `prog_array` holds the programs perf_event_open +
PERF_EVENT_IOC_SET_BPF attached.
"""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8
MAX_PROGS = 64  # of one perf event's prog_array


@dataclass(frozen=True)
class BpfProgRef:
    """A BPF program as its struct bpf_prog holds it."""

    prog_id: int
    name: str
    tag: str  # hex, as bpftool prints it

    def __str__(self) -> str:
        return f"BPF prog {self.prog_id} {self.name or '(unnamed)'} tag {self.tag}"


@dataclass(frozen=True)
class OwnerLayout:
    link_prog: int  # bpf_link.prog
    prog_aux: int  # bpf_prog.aux
    prog_tag: int  # bpf_prog.tag
    aux_id: int
    aux_name: int
    aux_back: int  # bpf_prog_aux.prog: the way back that proves a program
    call_progs: int | None  # trace_event_call.prog_array (None without perf events)
    array_items: int  # bpf_prog_array.items
    item_size: int  # sizeof(struct bpf_prog_array_item)


def owner_layout(btf: Btf) -> OwnerLayout | None:
    """The offsets, None where BTF lacks any of them."""
    wanted = (
        ("bpf_link", "prog"),
        ("bpf_prog", "aux"),
        ("bpf_prog", "tag"),
        ("bpf_prog_aux", "id"),
        ("bpf_prog_aux", "name"),
        ("bpf_prog_aux", "prog"),
    )
    found = [btf.member_offset(s, m) for s, m in wanted]
    items = btf.member_offset("bpf_prog_array", "items")
    item_size = btf.struct_size("bpf_prog_array_item")
    if any(f is None for f in found) or items is None or not item_size:
        return None
    link, aux, tag, aux_id, name, back = (int(f or 0) for f in found)
    calls = btf.member_offset("trace_event_call", "prog_array")
    return OwnerLayout(link, aux, tag, aux_id, name, back, calls, items, item_size)


def prog_at(memory: KernelMemory, at: OwnerLayout, prog: int) -> BpfProgRef | None:
    """The program at `prog`, None where no program is there."""
    if prog < KERNEL_SPACE:
        return None
    try:
        aux = read_u64(memory, prog + at.prog_aux)
        if aux < KERNEL_SPACE or read_u64(memory, aux + at.aux_back) != prog:
            return None
        prog_id = read_u32(memory, aux + at.aux_id)
        raw_name = memory.read(aux + at.aux_name, BPF_OBJ_NAME_LEN)
        tag = memory.read(prog + at.prog_tag, BPF_TAG_SIZE).hex()
    except KernelAccessError:
        return None
    name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
    return BpfProgRef(prog_id, name, tag)


def raw_tracepoint_prog(memory: KernelMemory, at: OwnerLayout, data: int) -> BpfProgRef | None:
    """The program a raw tracepoint probe's data leads to: through its link, or itself."""
    try:
        through_link = read_u64(memory, data + at.link_prog) if data >= KERNEL_SPACE else 0
    except KernelAccessError:
        through_link = 0
    return prog_at(memory, at, through_link) or prog_at(memory, at, data)


def perf_progs(memory: KernelMemory, at: OwnerLayout, call: int) -> tuple[BpfProgRef, ...]:
    """The programs in a trace_event_call's prog_array (perf events' BPF programs)."""
    if at.call_progs is None or call < KERNEL_SPACE:
        return ()
    try:
        array = read_u64(memory, call + at.call_progs)
    except KernelAccessError:
        return ()
    found: list[BpfProgRef] = []
    for i in range(MAX_PROGS if array >= KERNEL_SPACE else 0):
        try:  # one item at a time: the array ends at a NULL prog, maybe at its mapping's end
            prog = read_u64(memory, array + at.array_items + i * at.item_size)
        except KernelAccessError:
            break
        ref = prog_at(memory, at, prog) if prog else None
        if ref is None:
            break
        found.append(ref)
    return tuple(found)
