"""The BPF socket iterators: the kernel's socket tables walked by bpf_iter_tcp, bpf_iter_udp
and bpf_iter_unix, with what they find written into a map, not a seq file.

An iterator program (BPF_PROG_TYPE_TRACING, BPF_TRACE_ITER, verified against the BTF FUNC of
its target) runs once per socket: bpf_iter_tcp walks the listening and established hash
tables (request and TIME_WAIT sockets included), bpf_iter_udp the UDP table, bpf_iter_unix
the unix table, each of the network namespace of whoever creates the iterator fd (so it is
created in the namespace's thread, netns.py). read() of that fd drives the walk; the program
writes nothing to it. It copies each socket's family, ports, state, addresses and inode into
the next slot of an mmap-able array map, counted in a second one-slot map, so neither
tcp4_seq_show() and its kin nor the seq_file read path is on the way: a hook on either
leaves this view alone.

Fields come from struct sock_common through bpf_probe_read_kernel at offsets from vmlinux BTF;
the inode is sock->sk_ino where the kernel caches it (6.16+), else the socket's
socket_alloc.vfs_inode.i_ino, as sock_i_ino() reads it; none is read for a TIME_WAIT or
request socket, which has no struct sock behind its sock_common.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    R0,
    R1,
    R2,
    R3,
    R6,
    R7,
    R8,
    R9,
    R10,
    add64_imm,
    call,
    exit_insn,
    jeq_imm,
    jgt_imm,
    ld_map_fd,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    st_mem,
    stx_mem,
)
from patchguard.kernel.bpf.iterators import BPF_ITER_CREATE, BPF_PROG_TYPE_TRACING, BPF_TRACE_ITER
from patchguard.kernel.bpf.objects import map_info, prog_info
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError, oserror_reason
from patchguard.surfaces.sockets.procnet import UNIX_STATES, state_name
from patchguard.surfaces.sockets.records import SocketEntry

BPF_FUNC_map_lookup_elem = 1
BPF_FUNC_probe_read_kernel = 113
TARGETS = {"tcp": "bpf_iter_tcp", "udp": "bpf_iter_udp", "unix": "bpf_iter_unix"}
CTX_SOCK = 8  # struct bpf_iter__{tcp,udp,unix}: meta, then the socket pointer (NULL at the end)
MAX_RECORDS = 1 << 18  # sockets per walk; more is said, not silently cut
# What the program writes per socket: inode, family, local port (host order), remote port
# (network order), state, pad, IPv4 local and remote, IPv6 local and remote.
RECORD = struct.Struct("=QHH2sBx4s4s16s16s")
TIME_WAIT, NEW_SYN_RECV, TCP_LISTEN = 6, 12, 10
UNIX_FROM_SK_STATE = {1: 3, 2: 2, 7: 1}  # sk_state -> the /proc/net/unix St column
READ_SIZE = 1 << 16


@dataclass(frozen=True)
class SockOffsets:
    """Where struct sock_common and struct sock keep what the program copies, from BTF."""

    family: int
    num: int
    dport: int
    state: int
    saddr: int
    daddr: int
    v6_saddr: int | None  # None: a kernel without IPv6
    v6_daddr: int | None
    sk_ino: int | None  # struct sock's cached inode (6.16+)
    sk_socket: int
    socket_ino: int  # offsetof(struct socket_alloc, vfs_inode) + offsetof(struct inode, i_ino)

    @classmethod
    def from_btf(cls, btf: Btf) -> SockOffsets:
        common = {
            m: btf.member_offset("sock_common", f"skc_{m}")
            for m in ("family", "num", "dport", "state", "rcv_saddr", "daddr")
        }
        chain = {
            "sk_socket": btf.member_offset("sock", "sk_socket"),
            "vfs_inode": btf.member_offset("socket_alloc", "vfs_inode"),
            "i_ino": btf.member_offset("inode", "i_ino"),
        }
        missing = [m for m, off in {**common, **chain}.items() if off is None]
        if missing:
            raise KernelAccessError("vmlinux BTF", f"no socket member {missing[0]}")
        off = {m: o or 0 for m, o in {**common, **chain}.items()}
        return cls(
            off["family"],
            off["num"],
            off["dport"],
            off["state"],
            off["rcv_saddr"],
            off["daddr"],
            btf.member_offset("sock_common", "skc_v6_rcv_saddr"),
            btf.member_offset("sock_common", "skc_v6_daddr"),
            btf.member_offset("sock", "sk_ino"),
            off["sk_socket"],
            off["vfs_inode"] + off["i_ino"],
        )


# --- the program --------------------------------------------------------------------------------

Insn = bytes | Callable[[int], bytes]  # a jump to the end is a function of where the end is


def assemble(parts: list[Insn]) -> bytes:
    """Every `goto end` resolved: its offset is the number of slots between it and the end
    (r0 = 0; exit), a 16-byte ld_imm64 counting as two."""
    slots = [len(p) // 8 if isinstance(p, bytes) else 1 for p in parts]
    total, out, at = sum(slots), [], 0
    for part, size in zip(parts, slots, strict=True):
        at += size
        out.append(part if isinstance(part, bytes) else part(total - at))
    return b"".join(out) + mov64_imm(R0, 0) + exit_insn()


def _read(dst_off: int, size: int, src_off: int) -> list[Insn]:
    """bpf_probe_read_kernel(record + dst_off, size, sk + src_off)."""
    return [
        mov64_reg(R1, R8),
        add64_imm(R1, dst_off),
        mov64_imm(R2, size),
        mov64_reg(R3, R7),
        add64_imm(R3, src_off),
        call(BPF_FUNC_probe_read_kernel),
    ]


def lookup(map_fd: int) -> list[Insn]:
    """r0 = the map's value at the u32 key at r10-4, or to the end where there is none."""
    return [
        mov64_reg(R2, R10),
        add64_imm(R2, -4),
        ld_map_fd(R1, map_fd),
        call(BPF_FUNC_map_lookup_elem),
        lambda end: jeq_imm(R0, 0, end),
    ]


def next_slot(count_fd: int, records_fd: int) -> list[Insn]:
    """r8 = the next record slot, the count moved on; to the end when the map is full."""
    return [
        st_mem(4, R10, -4, 0),
        *lookup(count_fd),
        mov64_reg(R8, R0),
        ldx_mem(4, R9, R8, 0),
        lambda end: jgt_imm(R9, MAX_RECORDS - 1, end),
        mov64_reg(R1, R9),
        add64_imm(R1, 1),
        stx_mem(4, R8, R1, 0),
        stx_mem(4, R10, R9, -4),
        *lookup(records_fd),
        mov64_reg(R8, R0),
    ]


def _copy(off: SockOffsets) -> list[Insn]:
    parts = [
        st_mem(8, R8, 0, 0),
        *_read(8, 2, off.family),
        *_read(10, 2, off.num),
        *_read(12, 2, off.dport),
        *_read(14, 1, off.state),
        *_read(16, 4, off.saddr),
        *_read(20, 4, off.daddr),
    ]
    if off.v6_saddr is not None and off.v6_daddr is not None:
        parts += [*_read(24, 16, off.v6_saddr), *_read(40, 16, off.v6_daddr)]
    return parts


def _inode(off: SockOffsets) -> list[Insn]:
    """The inode, for full sockets only (a TIME_WAIT or request sock has no struct sock)."""
    parts: list[Insn] = [
        ldx_mem(1, R1, R8, 14),
        lambda end: jeq_imm(R1, TIME_WAIT, end),
        lambda end: jeq_imm(R1, NEW_SYN_RECV, end),
    ]
    if off.sk_ino is not None:
        return [*parts, *_read(0, 8, off.sk_ino)]
    return [
        *parts,
        mov64_reg(R1, R10),
        add64_imm(R1, -16),
        mov64_imm(R2, 8),
        mov64_reg(R3, R7),
        add64_imm(R3, off.sk_socket),
        call(BPF_FUNC_probe_read_kernel),
        ldx_mem(8, R3, R10, -16),
        lambda end: jeq_imm(R3, 0, end),
        add64_imm(R3, off.socket_ino),
        mov64_reg(R1, R8),
        mov64_imm(R2, 8),
        call(BPF_FUNC_probe_read_kernel),
    ]


def sock_iter_program(off: SockOffsets, count_fd: int, records_fd: int) -> bytes:
    return assemble(
        [
            mov64_reg(R6, R1),
            ldx_mem(8, R7, R6, CTX_SOCK),
            lambda end: jeq_imm(R7, 0, end),  # NULL: the end of the walk
            *next_slot(count_fd, records_fd),
            *_copy(off),
            *_inode(off),
        ]
    )


# --- records ------------------------------------------------------------------------------------


def _state(protocol: str, state: int) -> str:
    if protocol == "unix":
        if state == TCP_LISTEN:
            return "LISTEN"
        return UNIX_STATES.get(UNIX_FROM_SK_STATE.get(state, 0)) or f"state {state}"
    return state_name(protocol, state)


def _unix_records(data: bytes) -> list[SocketEntry]:
    return [
        SocketEntry("unix", _state("unix", state), inode)
        for inode, _, _, _, state, *_ in RECORD.iter_unpack(data)
    ]


def parse_records(target: str, data: bytes) -> list[SocketEntry]:
    """What the program wrote, slot after slot, as the other views' rows (one comprehension:
    there is one per socket)."""
    if target == "unix":
        return _unix_records(data)
    v4, v6, tcp, inet6 = target, target + "6", target == "tcp", socket.AF_INET6
    names = {n: state_name(target, n) for n in range(256)}
    return [
        SocketEntry(
            v6 if family == inet6 else v4,
            names[state],
            inode,
            num,
            tcp and state == TIME_WAIT,
            s6 if family == inet6 else s4,
            d6 if family == inet6 else d4,
            (dport[0] << 8) | dport[1],
        )
        for inode, family, num, dport, state, s4, d4, s6, d6 in RECORD.iter_unpack(data)
    ]


# --- loading and walking ------------------------------------------------------------------------


def record_maps(record: int, prefix: str) -> tuple[int, int, mmap.mmap]:
    """A one-slot count and an mmap-able array of MAX_RECORDS records, mapped read-only."""
    count_fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, f"{prefix}_count")
    try:
        size = record * MAX_RECORDS
        records_fd = bpf.map_create(
            bpf.BPF_MAP_TYPE_ARRAY, 4, record, MAX_RECORDS, f"{prefix}_records",
            bpf.BPF_F_MMAPABLE,
        )  # fmt: skip
    except BaseException:
        os.close(count_fd)
        raise
    try:
        return count_fd, records_fd, mmap.mmap(records_fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    except BaseException:
        os.close(count_fd)
        os.close(records_fd)
        raise


class SocketIterators:
    """The three programs and their links, the maps they fill; walk() reads one table in
    the calling thread's network namespace. Targets the kernel refuses are in `refused`."""

    def __init__(self, count_fd: int, records_fd: int, records: mmap.mmap) -> None:
        self.count_fd, self.records_fd, self.records = count_fd, records_fd, records
        self.links: dict[str, tuple[int, int]] = {}  # target -> (prog fd, link fd)
        self.refused: dict[str, str] = {}
        self.prog_ids: list[int] = []
        self.map_ids = [map_info(fd).map_id for fd in (count_fd, records_fd)]

    @classmethod
    def open(cls, btf: Btf) -> SocketIterators:
        off = SockOffsets.from_btf(btf)
        try:
            iters = cls(*record_maps(RECORD.size, "pg_sk"))
        except OSError as exc:
            raise KernelAccessError("BPF socket iterator maps", oserror_reason(exc)) from exc
        program = sock_iter_program(off, iters.count_fd, iters.records_fd)
        for target, func in TARGETS.items():
            iters._attach(btf, target, func, program)
        return iters

    def _attach(self, btf: Btf, target: str, func: str, program: bytes) -> None:
        func_id = btf.func_id(func)
        if func_id is None:
            self.refused[target] = f"no FUNC {func} in vmlinux BTF (no {target} iterator)"
            return
        try:
            prog_fd = bpf.prog_load(
                BPF_PROG_TYPE_TRACING, program, f"pg_{target}_iter",
                expected_attach_type=BPF_TRACE_ITER, attach_btf_id=func_id,
            )  # fmt: skip
        except bpf.BpfError as exc:
            self.refused[target] = str(exc)
            return
        try:
            link_fd = bpf.link_create(prog_fd, 0, BPF_TRACE_ITER)
        except bpf.BpfError as exc:
            os.close(prog_fd)
            self.refused[target] = str(exc)
            return
        self.links[target] = (prog_fd, link_fd)
        self.prog_ids.append(prog_info(prog_fd).prog_id)

    def walk(self, target: str) -> list[SocketEntry]:
        """One walk of a table, its records as rows."""
        _, link_fd = self.links[target]
        data = walk_into(link_fd, self.count_fd, self.records, RECORD.size, TARGETS[target])
        return parse_records(target, data)

    def close(self) -> None:
        for prog_fd, link_fd in self.links.values():
            for fd in (link_fd, prog_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.links = {}
        with contextlib.suppress(OSError, ValueError):
            self.records.close()
        for fd in (self.count_fd, self.records_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.count_fd = self.records_fd = -1


def walk_into(link_fd: int, count_fd: int, records: mmap.mmap, size: int, what: str) -> bytes:
    """One walk of an iterator that writes into maps: the count reset, the iterator read to
    its end (the program writes nothing to it: reading only drives the walk), the slots it
    filled copied out of the mapped array."""
    key = struct.pack("=I", 0)
    bpf.map_update(count_fd, key, key)
    fd, _ = bpf.sys_bpf(BPF_ITER_CREATE, struct.pack("<II", link_fd, 0), "ITER_CREATE")
    try:
        while os.read(fd, READ_SIZE):
            pass
    except OSError as exc:
        raise KernelAccessError(f"{what} read()", oserror_reason(exc)) from exc
    finally:
        os.close(fd)
    (count,) = struct.unpack("=I", bpf.map_lookup(count_fd, key, 4))
    if count >= MAX_RECORDS:
        raise KernelAccessError(what, f"more than {MAX_RECORDS} records")
    return records[: count * size]


__all__ = [
    "MAX_RECORDS",
    "Insn",
    "SockOffsets",
    "SocketIterators",
    "assemble",
    "lookup",
    "next_slot",
    "parse_records",
    "record_maps",
    "sock_iter_program",
    "walk_into",
]
