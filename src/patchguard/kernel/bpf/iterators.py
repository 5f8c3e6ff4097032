"""A BPF task iterator: the kernel's own list of tasks, read without /proc.

An iterator program (BPF_PROG_TYPE_TRACING, expected_attach_type BPF_TRACE_ITER, verified
against BTF FUNC `bpf_iter_task`) runs once per task; BPF_LINK_CREATE attaches it and
BPF_ITER_CREATE gives an fd whose read() runs it (kernel/bpf/task_iter.c: task_seq_get_next()
walks the pid namespace with find_ge_pid(), never through getdents). The program copies
task->pid, task->tgid and task->comm into the seq_file with bpf_seq_write; user space reads
fixed 24-byte records until EOF.

The same program also puts each task into a hash map keyed by pid (with its task_struct's
address), a copy that never goes through read(): a rootkit that filters what read() returns
from seq files (the public ones filter bpf_iter output so that an iterator misses their
tasks) leaves the map whole, so the two copies disagree. A task in neither copy was never
handed to the program: the kernel's own walk (task_seq_get_next) left it out.

The ctx is struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; };
meta->seq is the seq_file; task is NULL once, at the end. Offsets into task_struct come from
vmlinux BTF, so one program fits every kernel that has BTF. Direct loads through the BTF
pointer are tried first; a verifier that refuses them gets the same program built on
bpf_probe_read_kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from dataclasses import dataclass

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R10,
    add64_imm,
    call,
    exit_insn,
    jeq_imm,
    ld_map_fd,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    stx_mem,
)
from patchguard.kernel.bpf.objects import map_info, prog_info
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError, oserror_reason

BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_ITER = 28  # enum bpf_attach_type
BPF_ITER_CREATE = 33  # enum bpf_cmd
BPF_FUNC_map_update_elem = 2
BPF_FUNC_probe_read_kernel = 113
BPF_FUNC_seq_write = 127
ITER_TARGET = "bpf_iter_task"  # DEFINE_BPF_ITER_FUNC(task, ...)
CTX_META, CTX_TASK = 0, 8  # struct bpf_iter__task
META_SEQ = 0  # struct bpf_iter_meta: seq is its first member
COMM_LEN = 16  # TASK_COMM_LEN
RECORD = struct.Struct(f"<II{COMM_LEN}s")  # pid, tgid, comm: what the program writes
READ_SIZE = 1 << 16
# The map copy: pid -> (task address, RECORD). Entries are allocated as tasks are added; the
# map's buckets are allocated up front and every drain walks them all, so it is sized by the
# task count the caller expects (4M buckets, PID_MAX_LIMIT, cost 80 ms a walk). A map that
# fills drops tasks, which would look like hiding: a full map fails the walk instead.
COPY = struct.Struct(f"<Q{RECORD.size}s")
COPY_ENTRIES = 1 << 16
_COPY_FIELDS = struct.Struct(f"<QII{COMM_LEN}s")  # COPY with its RECORD unpacked in place


@dataclass(frozen=True)
class TaskOffsets:
    """Where task_struct keeps the fields the program copies, from BTF."""

    pid: int
    tgid: int
    comm: int

    @classmethod
    def from_btf(cls, btf: Btf) -> TaskOffsets:
        found = {m: btf.member_offset("task_struct", m) for m in ("pid", "tgid", "comm")}
        missing = [m for m, off in found.items() if off is None]
        if missing:
            raise KernelAccessError("vmlinux BTF", f"struct task_struct has no {missing[0]}")
        return cls(*(off for off in found.values() if off is not None))


@dataclass(frozen=True)
class IterTask:
    """One task as the iterator saw it: pid is the thread id, tgid its process."""

    pid: int
    tgid: int
    comm: str


# Stack slots of the record the program writes: pid at -24, tgid at -20, comm at -16; the
# map copy's value starts at -32 with the task's address.
_SLOT_TASK, _SLOT_PID, _SLOT_TGID, _SLOT_COMM = -32, -24, -20, -16


def _direct_copy(off: TaskOffsets) -> list[bytes]:
    """Loads through the BTF pointer (PTR_TO_BTF_ID); the kernel catches any fault."""
    return [
        ldx_mem(4, R1, R7, off.pid),
        stx_mem(4, R10, R1, _SLOT_PID),
        ldx_mem(4, R1, R7, off.tgid),
        stx_mem(4, R10, R1, _SLOT_TGID),
        ldx_mem(8, R1, R7, off.comm),
        stx_mem(8, R10, R1, _SLOT_COMM),
        ldx_mem(8, R1, R7, off.comm + 8),
        stx_mem(8, R10, R1, _SLOT_COMM + 8),
    ]


def _probe_read(slot: int, size: int, field_off: int) -> list[bytes]:
    return [
        mov64_reg(R1, R10),
        add64_imm(R1, slot),
        mov64_imm(R2, size),
        mov64_reg(R3, R7),
        add64_imm(R3, field_off),
        call(BPF_FUNC_probe_read_kernel),
    ]


def _probe_read_copy(off: TaskOffsets) -> list[bytes]:
    """The same copy through bpf_probe_read_kernel, for verifiers that refuse direct loads."""
    return [
        *_probe_read(_SLOT_PID, 4, off.pid),
        *_probe_read(_SLOT_TGID, 4, off.tgid),
        *_probe_read(_SLOT_COMM, COMM_LEN, off.comm),
    ]


def _map_copy(map_fd: int) -> list[bytes]:
    """bpf_map_update_elem(map, &pid, &{task, record}, BPF_ANY)."""
    return [
        stx_mem(8, R10, R7, _SLOT_TASK),
        ld_map_fd(R1, map_fd),
        mov64_reg(R2, R10),
        add64_imm(R2, _SLOT_PID),
        mov64_reg(R3, R10),
        add64_imm(R3, _SLOT_TASK),
        mov64_imm(R4, 0),
        call(BPF_FUNC_map_update_elem),
    ]


def task_iter_program(off: TaskOffsets, probe_read: bool = False, map_fd: int = -1) -> bytes:
    """The iterator program; with a map, it also copies every task into it (_map_copy)."""
    copy = _probe_read_copy(off) if probe_read else _direct_copy(off)
    if map_fd >= 0:
        copy += _map_copy(map_fd)
    write = [
        ldx_mem(8, R1, R6, CTX_META),
        ldx_mem(8, R1, R1, META_SEQ),  # seq = ctx->meta->seq
        mov64_reg(R2, R10),
        add64_imm(R2, _SLOT_PID),
        mov64_imm(R3, RECORD.size),
        call(BPF_FUNC_seq_write),
    ]
    body = [*copy, *write]
    return b"".join(
        [
            mov64_reg(R6, R1),  # r6 = ctx
            ldx_mem(8, R7, R6, CTX_TASK),  # r7 = ctx->task
            # NULL: the end of the walk, nothing to write (counted in slots: ld_map_fd is two)
            jeq_imm(R7, 0, sum(len(i) for i in body) // 8),
            *body,
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    )


def parse_records(data: bytes) -> list[IterTask]:
    """What the program wrote: RECORD after RECORD (a torn tail would be a kernel bug)."""
    usable = len(data) - len(data) % RECORD.size
    return [
        IterTask(pid, tgid, comm.split(b"\0", 1)[0].decode(errors="replace"))
        for pid, tgid, comm in RECORD.iter_unpack(data[:usable])
    ]


def parse_copies(values: list[bytes]) -> list[tuple[int, IterTask]]:
    """(task address, task) of each value of the map copy: the address, then a RECORD."""
    return [
        (address, IterTask(pid, tgid, comm.split(b"\0", 1)[0].decode(errors="replace")))
        for address, pid, tgid, comm in map(_COPY_FIELDS.unpack_from, values)
    ]


def _load(btf: Btf, map_fd: int) -> int:
    target = btf.func_id(ITER_TARGET)
    if target is None:
        raise KernelAccessError("vmlinux BTF", f"no FUNC {ITER_TARGET} (no task iterator)")
    off = TaskOffsets.from_btf(btf)
    load = bpf.prog_load
    try:
        return load(
            BPF_PROG_TYPE_TRACING,
            task_iter_program(off, map_fd=map_fd),
            "pg_task_iter",
            expected_attach_type=BPF_TRACE_ITER,
            attach_btf_id=target,
        )
    except bpf.BpfError as exc:
        if exc.errno not in (errno.EACCES, errno.EINVAL):
            raise  # EPERM and the like: the probe-read program would be refused the same way
    return load(
        BPF_PROG_TYPE_TRACING,
        task_iter_program(off, probe_read=True, map_fd=map_fd),
        "pg_task_iter",
        expected_attach_type=BPF_TRACE_ITER,
        attach_btf_id=target,
    )


@dataclass(frozen=True)
class IterWalk:
    """One walk of the iterator: what read() returned, and the program's own map copy."""

    read: list[IterTask]
    copied: list[tuple[int, IterTask]]  # (task_struct address, task)


class TaskIterator:
    """The loaded program, its map copy and its link; every walk() runs the program once
    over the task list."""

    def __init__(self, prog_fd: int, link_fd: int, map_fd: int, entries: int) -> None:
        self.prog_fd = prog_fd
        self.link_fd = link_fd
        self.map_fd = map_fd
        self.entries = entries
        self.prog_id = prog_info(prog_fd).prog_id
        self.map_id = map_info(map_fd).map_id

    @classmethod
    def open(cls, btf: Btf, entries: int = COPY_ENTRIES) -> TaskIterator:
        """Load and attach; the map copy holds up to `entries` tasks."""
        map_fd = _copy_map(entries)
        try:
            prog_fd = _load(btf, map_fd)
        except BaseException:
            os.close(map_fd)
            raise
        try:
            link_fd = bpf.link_create(prog_fd, 0, BPF_TRACE_ITER)
        except BaseException:
            os.close(prog_fd)
            os.close(map_fd)
            raise
        return cls(prog_fd, link_fd, map_fd, entries)

    def tasks(self) -> list[IterTask]:
        """The read() copy of one walk."""
        return self.walk().read

    def walk(self) -> IterWalk:
        """One walk: the map is emptied first, so it holds this walk's tasks only."""
        self._empty_copy()
        fd, _ = bpf.sys_bpf(BPF_ITER_CREATE, struct.pack("<II", self.link_fd, 0), "ITER_CREATE")
        try:
            read = parse_records(_read_all(fd))
        finally:
            os.close(fd)
        return IterWalk(read, self._copies())

    def _copies(self) -> list[tuple[int, IterTask]]:
        """The map copy, emptied as it is read (the next walk starts from an empty map)."""
        values = bpf.map_drain(self.map_fd, 4, COPY.size, self.entries)
        if len(values) >= self.entries:
            raise KernelAccessError(
                "BPF task iterator map", f"the map copy is full ({self.entries} tasks)"
            )
        return parse_copies(values)

    def _empty_copy(self) -> None:
        bpf.map_drain(self.map_fd, 4, COPY.size, self.entries)  # a walk cut short left some

    def close(self) -> None:
        for fd in (self.link_fd, self.prog_fd, self.map_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.link_fd = self.prog_fd = self.map_fd = -1

    def __enter__(self) -> TaskIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_map(entries: int) -> int:
    try:
        return bpf.map_create(
            bpf.BPF_MAP_TYPE_HASH, 4, COPY.size, entries, "pg_task_copy", bpf.BPF_F_NO_PREALLOC
        )
    except bpf.BpfError as exc:
        raise KernelAccessError("BPF task iterator map", exc.reason) from exc


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, READ_SIZE):
            chunks.append(chunk)
    except OSError as exc:
        raise KernelAccessError("bpf_iter_task read()", oserror_reason(exc)) from exc
    return b"".join(chunks)


__all__ = [
    "IterTask",
    "IterWalk",
    "TaskIterator",
    "TaskOffsets",
    "parse_copies",
    "parse_records",
    "task_iter_program",
]
