"""The eBPF kernel-memory reader: bpf_probe_read_kernel inside a raw-tracepoint program, run on
demand by BPF_PROG_TEST_RUN. It needs no /proc/kcore and no module, only CAP_SYS_ADMIN, BPF
and a lockdown below `confidentiality`, which refuses bpf_probe_read_kernel
(LOCKDOWN_BPF_READ_KERNEL).

The program reads ctx->args[0] (address) and ctx->args[1] (length) into the value of a
one-entry array map and returns the helper's result; user space reads the value where it maps
it (BPF_F_MMAPABLE), or with MAP_LOOKUP_ELEM on kernels older than 5.5.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import threading
from collections.abc import Callable, Sequence

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    R0,
    R1,
    R2,
    R3,
    R6,
    R7,
    add64_imm,
    call,
    exit_insn,
    insn,
    jeq_imm,
    jgt_imm,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    value_at_key_0,
)
from patchguard.kernel.bpf.objects import map_info, prog_info
from patchguard.kernel.errors import KernelAccessError, explain_errno
from patchguard.kernel.memory import MemoryReadError

BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_FUNC_probe_read_kernel = 113
PAGE = 4096
# One test run reads up to CHUNK bytes. Each syscall hands the GIL to the scan's other threads
# and waits to get it back, so few large reads beat many small ones (19 MB of core text: 19
# test runs, not 300). A fault anywhere fails the whole chunk, so a failed chunk is read again
# page by page to name the page that failed.
CHUNK = 1 << 20


GATHER = 6  # (address, size) pairs one run reads: the 12 u64 a raw tracepoint's ctx holds
CTX = 16 * GATHER
PAIR_SLOTS = 8  # instructions a pair after the first takes
BPF_JMP, BPF_JNE = 0x05, 0x50


def reader_program(map_fd: int, chunk: int) -> bytes:
    """args[0], args[1]: address and size (<= chunk) of a read into the value's start; then,
    while args[2i + 1] is not 0, up to GATHER - 1 more reads of at most a page each into the
    value's page i (many small reads, a struct module each, in one run). r0: 0, or the first
    failed read's error (its later pairs are not read), or -EINVAL for a size out of bounds."""
    gathered = b"".join(_gathered(i, PAIR_SLOTS * (GATHER - 1 - i)) for i in range(1, GATHER))
    return b"".join(
        [
            mov64_reg(R6, R1),  # r6 = ctx (struct bpf_raw_tracepoint_args *)
            *value_at_key_0(map_fd, 6 + 1 + len(gathered) // 8),  # no value: -EINVAL
            mov64_reg(R1, R0),  # dst = map value
            ldx_mem(8, R2, R6, 8),  # size = args[1]
            jgt_imm(R2, chunk, 3 + len(gathered) // 8 + 1),  # bound it for the verifier
            ldx_mem(8, R3, R6, 0),  # src = args[0]
            mov64_reg(R7, R1),  # the value, kept for the pairs after the first
            call(BPF_FUNC_probe_read_kernel),
            gathered,
            exit_insn(),  # r0 = 0 or -EFAULT
            mov64_imm(R0, -22),  # -EINVAL: size out of bounds
            exit_insn(),
        ]
    )


def _gathered(i: int, rest: int) -> bytes:
    """Pair i: stop (r0 as it is) after a failed read or at a size of 0; else read at most a
    page into the value's page i. `rest`: instructions of the pairs after it, to jump over
    them to the exit (or, for a size out of bounds, to the refusal after it)."""
    return b"".join(
        [
            insn(BPF_JMP | BPF_JNE, R0, off=7 + rest),  # the last read failed: say so
            ldx_mem(8, R2, R6, 16 * i + 8),
            jeq_imm(R2, 0, 5 + rest),  # no more pairs: r0 is 0
            jgt_imm(R2, PAGE, 5 + rest),  # -> the refusal
            mov64_reg(R1, R7),
            add64_imm(R1, i * PAGE),
            ldx_mem(8, R3, R6, 16 * i),
            call(BPF_FUNC_probe_read_kernel),
        ]
    )


class EbpfReader:
    name = "ebpf"

    def __init__(self, map_fd: int, prog_fd: int, value: mmap.mmap | None) -> None:
        self._map_fd = map_fd
        self._prog_fd = prog_fd
        self._value = value  # the map value, mapped; None: read it with MAP_LOOKUP_ELEM
        # The first `size` bytes of the value, after a test run has filled it.
        self._fetch = _mapped(value) if value is not None else _looked_up(map_fd)
        # A read fills the one map value, then copies it out: surfaces read from
        # several threads, and without the lock one thread gets another's bytes (the lab saw
        # an IDT gate made of the netfilter surface's pointers).
        self._lock = threading.Lock()
        # Our own objects: the ebpf surface leaves them out of what it reports about the host.
        self.prog_id = prog_info(prog_fd).prog_id
        self.map_id = map_info(map_fd).map_id

    @classmethod
    def open(cls) -> EbpfReader:
        """Load the reader; KernelAccessError says why not (no BPF, EPERM, lockdown)."""
        map_fd, value = _value_map()
        try:
            prog_fd = bpf.prog_load(
                BPF_PROG_TYPE_RAW_TRACEPOINT, reader_program(map_fd, CHUNK), "pg_kmem_read"
            )
        except bpf.BpfError as exc:
            _close(map_fd, value)
            raise KernelAccessError("eBPF memory reader", _load_refusal(exc)) from exc
        return cls(map_fd, prog_fd, value)

    def read(self, address: int, size: int) -> bytes:
        if 0 < size <= CHUNK - (address % CHUNK):
            # One run serves it: its bytes as they are, not copied twice more through a
            # bytearray (a MiB read made three MiB buffers, which a guard's heap then kept).
            return self._read_run(address, size)
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            out += self._read_run(at, min(size - len(out), CHUNK - (at % CHUNK)))  # aligned
        return bytes(out)

    def _read_run(self, address: int, size: int) -> bytes:
        """One run's bytes; page by page where the run failed (the page that fails raises)."""
        try:
            return self._read_chunk(address, size)
        except MemoryReadError:
            if size <= PAGE:
                raise
            return self._read_pages(address, size)

    def _read_pages(self, address: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            out += self._read_chunk(at, min(size - len(out), PAGE - (at % PAGE)))
        return bytes(out)

    def read_many(self, spans: Sequence[tuple[int, int]]) -> list[bytes | None]:
        """The bytes of each (address, size <= PAGE), GATHER to a run (a struct module each:
        one run for six, not one each); None where that read failed."""
        found: list[bytes | None] = []
        for at in range(0, len(spans), GATHER):
            found += self._gathered(spans[at : at + GATHER])
        return found

    def _gathered(self, spans: Sequence[tuple[int, int]]) -> list[bytes | None]:
        if any(not 0 < size <= PAGE for _, size in spans):
            raise ValueError("a gathered read is one page at most")
        ctx = b"".join(struct.pack("<QQ", address, size) for address, size in spans)
        with self._lock:
            ret = bpf.prog_test_run(self._prog_fd, ctx.ljust(CTX, b"\0"))
            data = None if ret != 0 else self._fetch(len(spans) * PAGE)
        if data is None:  # one failed: each read alone says which
            return [self._or_none(address, size) for address, size in spans]
        return [data[i * PAGE : i * PAGE + size] for i, (_, size) in enumerate(spans)]

    def _or_none(self, address: int, size: int) -> bytes | None:
        try:
            return self._read_chunk(address, size)
        except MemoryReadError:
            return None

    def _read_chunk(self, address: int, size: int) -> bytes:
        with self._lock:
            ret = bpf.prog_test_run(
                self._prog_fd, struct.pack("<QQ", address, size).ljust(CTX, b"\0")
            )
            data = None if ret < 0 else self._fetch(size)
        if data is None:
            raise MemoryReadError(address, size, f"bpf_probe_read_kernel: {explain_errno(-ret)}")
        return data

    def close(self) -> None:
        if self._prog_fd >= 0:
            os.close(self._prog_fd)
        if self._map_fd >= 0:
            _close(self._map_fd, self._value)
        self._prog_fd = self._map_fd = -1
        self._value = None


def _mapped(value: mmap.mmap) -> Callable[[int], bytes]:
    return lambda size: value[:size]


def _looked_up(map_fd: int) -> Callable[[int], bytes]:
    """Copied out with MAP_LOOKUP_ELEM (buffers made once), where the value is not mapped."""
    lookup = bpf.MapReader(map_fd, struct.pack("<I", 0), CHUNK)
    return lambda size: bytes(lookup()[:size])


def _value_map() -> tuple[int, mmap.mmap | None]:
    """The one-value array the program reads into, and its value mapped read-only here (so a
    read costs one syscall and no copy out of the kernel); unmapped before 5.5."""
    try:
        map_fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, CHUNK, 1, "pg_kmem", bpf.BPF_F_MMAPABLE)
    except bpf.BpfError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: no such flag here yet
            raise
        return bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, CHUNK, 1, "pg_kmem"), None
    try:
        return map_fd, mmap.mmap(map_fd, CHUNK, mmap.MAP_SHARED, mmap.PROT_READ)
    except OSError:
        return map_fd, None


def _close(map_fd: int, value: mmap.mmap | None) -> None:
    if value is not None:
        value.close()
    os.close(map_fd)


def _load_refusal(exc: bpf.BpfError) -> str:
    if "unknown func" in exc.reason or "bpf_probe_read_kernel" in exc.reason:
        return (
            "the kernel refuses bpf_probe_read_kernel (lockdown=confidentiality, or a kernel "
            f"without it): {exc.reason}"
        )
    return f"cannot load the reader program: {exc.reason}"
