"""A BPF task iterator: the kernel's own list of tasks, read without /proc.

An iterator program (BPF_PROG_TYPE_TRACING, expected_attach_type BPF_TRACE_ITER, verified
against BTF FUNC `bpf_iter_task`) runs once per task; BPF_LINK_CREATE attaches it and
BPF_ITER_CREATE gives an fd whose read() runs it (kernel/bpf/task_iter.c: task_seq_get_next()
walks the pid namespace with find_ge_pid(), never through getdents). The program copies
task->pid, task->tgid and task->comm into the seq_file with bpf_seq_write; user space reads
fixed 24-byte records until EOF.

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
    R6,
    R7,
    R10,
    add64_imm,
    call,
    exit_insn,
    jeq_imm,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    stx_mem,
)
from patchguard.kernel.bpf.objects import prog_info
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError, oserror_reason

BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_ITER = 28  # enum bpf_attach_type
BPF_ITER_CREATE = 33  # enum bpf_cmd
BPF_FUNC_probe_read_kernel = 113
BPF_FUNC_seq_write = 127
ITER_TARGET = "bpf_iter_task"  # DEFINE_BPF_ITER_FUNC(task, ...)
CTX_META, CTX_TASK = 0, 8  # struct bpf_iter__task
META_SEQ = 0  # struct bpf_iter_meta: seq is its first member
COMM_LEN = 16  # TASK_COMM_LEN
RECORD = struct.Struct(f"<II{COMM_LEN}s")  # pid, tgid, comm: what the program writes
READ_SIZE = 1 << 16


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


# Stack slots of the record the program writes: pid at -24, tgid at -20, comm at -16.
_SLOT_PID, _SLOT_TGID, _SLOT_COMM = -24, -20, -16


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


def task_iter_program(off: TaskOffsets, probe_read: bool = False) -> bytes:
    copy = _probe_read_copy(off) if probe_read else _direct_copy(off)
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
            jeq_imm(R7, 0, len(body)),  # NULL: the end of the walk, nothing to write
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


def _load(btf: Btf) -> int:
    target = btf.func_id(ITER_TARGET)
    if target is None:
        raise KernelAccessError("vmlinux BTF", f"no FUNC {ITER_TARGET} (no task iterator)")
    off = TaskOffsets.from_btf(btf)
    load = bpf.prog_load
    try:
        return load(
            BPF_PROG_TYPE_TRACING,
            task_iter_program(off),
            "pg_task_iter",
            expected_attach_type=BPF_TRACE_ITER,
            attach_btf_id=target,
        )
    except bpf.BpfError as exc:
        if exc.errno not in (errno.EACCES, errno.EINVAL):
            raise  # EPERM and the like: the probe-read program would be refused the same way
    return load(
        BPF_PROG_TYPE_TRACING,
        task_iter_program(off, probe_read=True),
        "pg_task_iter",
        expected_attach_type=BPF_TRACE_ITER,
        attach_btf_id=target,
    )


class TaskIterator:
    """The loaded program and its link; every tasks() call walks the task list once."""

    def __init__(self, prog_fd: int, link_fd: int) -> None:
        self.prog_fd = prog_fd
        self.link_fd = link_fd
        self.prog_id = prog_info(prog_fd).prog_id

    @classmethod
    def open(cls, btf: Btf) -> TaskIterator:
        prog_fd = _load(btf)
        try:
            link_fd = bpf.link_create(prog_fd, 0, BPF_TRACE_ITER)
        except BaseException:
            os.close(prog_fd)
            raise
        return cls(prog_fd, link_fd)

    def tasks(self) -> list[IterTask]:
        fd, _ = bpf.sys_bpf(BPF_ITER_CREATE, struct.pack("<II", self.link_fd, 0), "ITER_CREATE")
        try:
            return parse_records(_read_all(fd))
        finally:
            os.close(fd)

    def close(self) -> None:
        for fd in (self.link_fd, self.prog_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.link_fd = self.prog_fd = -1

    def __enter__(self) -> TaskIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, READ_SIZE):
            chunks.append(chunk)
    except OSError as exc:
        raise KernelAccessError("bpf_iter_task read()", oserror_reason(exc)) from exc
    return b"".join(chunks)


__all__ = ["IterTask", "TaskIterator", "TaskOffsets", "parse_records", "task_iter_program"]
