"""What memory says of a BPF trampoline's programs: each `struct bpf_prog` the trampoline's code
passes to `__bpf_prog_enter*` (x86/bpf_trampoline.py), read through the memory reader and
vmlinux BTF: its id, name, tag and attach function (`prog->aux`), and the `struct bpf_ksym`s
of the program and of the trampoline image, with whether each is still on the kernel's own
list of BPF symbols (`bpf_kallsyms`, which /proc/kallsyms prints as `[bpf]`).

These are the ground truth the text views are compared with: an id bpf(2) does not list, a
symbol /proc/kallsyms does not show though the kernel's list holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory, read_u32, read_u64

NAME_LEN = 16  # BPF_OBJ_NAME_LEN
KSYM_NAME = 64  # bytes of bpf_ksym.name read: "bpf_prog_<16 hex>_<name>" and "bpf_trampoline_<u64>"
ATTACH_NAME = 128  # bytes of an attach function's name read
LIST_POISON2 = 0xDEAD000000000122  # list_del_rcu() leaves prev so (x86-64 POISON_POINTER_DELTA)
MAX_KSYMS = 1 << 16  # a longer walk is a loop or a misread


@dataclass(frozen=True)
class Ksym:
    """A struct bpf_ksym as memory holds it."""

    name: str
    start: int
    end: int
    listed: bool  # on the kernel's bpf_kallsyms list (its list neighbours point back at it)
    at: int  # the struct bpf_ksym


@dataclass(frozen=True)
class ProgInMemory:
    """A struct bpf_prog as memory holds it."""

    address: int
    prog_id: int
    name: str
    tag: str
    attach_to: str | None
    ksym: Ksym | None


@dataclass(frozen=True)
class Offsets:
    aux: int
    tag: int
    aux_id: int
    aux_name: int
    aux_attach: int
    aux_ksym: int
    image_ksym: int
    ksym_name: int
    ksym_start: int
    ksym_end: int
    ksym_lnode: int


def offsets(btf: Btf) -> Offsets:
    wanted = (
        ("bpf_prog", "aux"),
        ("bpf_prog", "tag"),
        ("bpf_prog_aux", "id"),
        ("bpf_prog_aux", "name"),
        ("bpf_prog_aux", "attach_func_name"),
        ("bpf_prog_aux", "ksym"),
        ("bpf_tramp_image", "ksym"),
        ("bpf_ksym", "name"),
        ("bpf_ksym", "start"),
        ("bpf_ksym", "end"),
        ("bpf_ksym", "lnode"),
    )
    found = [btf.member_offset(s, m) for s, m in wanted]
    missing = [f"{s}.{m}" for (s, m), at in zip(wanted, found, strict=True) if at is None]
    if missing:
        raise KernelAccessError("vmlinux BTF", f"no {', '.join(missing)}")
    return Offsets(*(at for at in found if at is not None))


class TrampolineMemory:
    """Reads the structs a trampoline's code points at."""

    def __init__(self, memory: KernelMemory, at: Offsets) -> None:
        self.memory = memory
        self.at = at

    def program(self, prog: int) -> ProgInMemory:
        o = self.at
        aux = self._pointer(prog + o.aux)
        tag = self.memory.read(prog + o.tag, 8).hex()
        attach = self._pointer(aux + o.aux_attach, null=True)
        return ProgInMemory(
            prog,
            read_u32(self.memory, aux + o.aux_id),
            self._string(aux + o.aux_name, NAME_LEN),
            tag,
            self._string(attach, ATTACH_NAME) if attach else None,
            self.ksym(aux + o.aux_ksym),
        )

    def image_ksym(self, image: int) -> Ksym:
        """The symbol of a trampoline image (struct bpf_tramp_image)."""
        return self.ksym(image + self.at.image_ksym)

    def ksym(self, ksym: int) -> Ksym:
        o = self.at
        node = ksym + o.ksym_lnode
        nxt, prev = read_u64(self.memory, node), read_u64(self.memory, node + 8)
        return Ksym(
            self._string(ksym + o.ksym_name, KSYM_NAME),
            read_u64(self.memory, ksym + o.ksym_start),
            read_u64(self.memory, ksym + o.ksym_end),
            self._linked(node, nxt, prev),
            ksym,
        )

    def listed(self, head: int) -> dict[int, str]:
        """start -> name of every symbol on the kernel's bpf_kallsyms list (`head`: its
        address, kernel/ftrace_records.variable_address finds it)."""
        node, found = read_u64(self.memory, head), dict[int, str]()
        while node != head:
            if len(found) > MAX_KSYMS or node < KERNEL_SPACE:
                raise KernelAccessError("bpf_kallsyms", f"implausible list node {node:#x}")
            at = node - self.at.ksym_lnode
            start = read_u64(self.memory, at + self.at.ksym_start)
            found[start] = self._string(at + self.at.ksym_name, KSYM_NAME)
            node = read_u64(self.memory, node)
        return found

    def _linked(self, node: int, nxt: int, prev: int) -> bool:
        """On a list: both neighbours are kernel pointers that point back at the node (an
        unlinked node is poisoned by list_del_rcu, or its own neighbour when never added)."""
        if nxt == node or prev == LIST_POISON2 or min(nxt, prev) < KERNEL_SPACE:
            return False
        return read_u64(self.memory, nxt + 8) == node and read_u64(self.memory, prev) == node

    def _pointer(self, address: int, null: bool = False) -> int:
        value = read_u64(self.memory, address)
        if (value or not null) and value < KERNEL_SPACE:
            raise KernelAccessError(f"kernel memory {address:#x}", f"no pointer: {value:#x}")
        return value

    def _string(self, address: int, size: int) -> str:
        return self.memory.read(address, size).split(b"\0", 1)[0].decode(errors="replace")
