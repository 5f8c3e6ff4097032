"""Told by the kernel: the guard's own BPF program on the syscall-exit tracepoints of the calls
that add hooks (bpf, perf_event_open, init_module, finit_module) or remove a module
(delete_module) writes to a ring buffer
(BPF_MAP_TYPE_RINGBUF) the guard waits on with epoll, so a new BPF program or link, module,
kprobe or ftrace user wakes the trigger check at once instead of at the next poll.

The program is built from raw instructions like the memory reader (kernel/bpf/reader.py) and
attached the way perf tools attach a tracepoint program (perf_event_open + PERF_EVENT_IOC_SET_BPF).
It leaves out the guard's own process (its trigger checks call bpf(2): each would wake it
again). The ring buffer is only a doorbell: what changed is still read by the triggers; where
none of this loads (no tracefs syscall events, no BPF), polling is the fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import select
import struct
import time
from pathlib import Path
from typing import Protocol

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    BPF_JMP,
    BPF_K,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R10,
    add64_imm,
    call,
    exit_insn,
    insn,
    jeq_imm,
    ld_map_fd,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    rsh64_imm,
    stx_mem,
)
from patchguard.kernel.bpf.objects import map_info, prog_info
from patchguard.kernel.errors import KernelAccessError, explain_errno
from patchguard.kernel.mounts import ensure_mounted

BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_FUNC_get_current_pid_tgid = 14
BPF_FUNC_ringbuf_output = 130
PROG_NAME = "pg_guard_wake"  # named in policy/manifests/patchguard-guard.toml
MAP_NAME = "pg_guard_events"
RING_SIZE = 4096  # a page: each event is 16 bytes; a full ring loses only doorbells
# The syscall exits that can add a hook, as tracefs names them; those a kernel lacks
# (no module support: no init_module) are skipped.
TRACEPOINTS = (
    "sys_exit_bpf",
    "sys_exit_perf_event_open",
    "sys_exit_init_module",
    "sys_exit_finit_module",
    # A module gone is seen at once too: its findings end, and the same module loaded again
    # is new (findings are reported once while they last).
    "sys_exit_delete_module",
)
SYSCALL_EVENTS = Path("/sys/kernel/tracing/events/syscalls")
NR_PERF_EVENT_OPEN = 298
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
# struct trace_event_raw_sys_exit: an 8-byte trace_entry, int __syscall_nr at 8, long ret at 16
# (events/syscalls/sys_exit_bpf/format).
SYSCALL_NR_OFFSET, RET_OFFSET = 8, 16
BPF_JNE, BPF_JSLT = 0x50, 0xC0
# Trigger checks at most this often however busy the ring: a storm of hook calls costs a
# bounded share of a core, and a new hook waits at most this long for its check.
MIN_GAP = 0.05

_libc = ctypes.CDLL(None, use_errno=True)


def wake_program(ring_fd: int, own_tgid: int) -> bytes:
    """On a syscall exit that may have added a hook, by any process but the guard, put the
    syscall number in the ring. Failed calls are left out, and so is a bpf(2) that returned
    0: a query (ids, infos, lookups: a scan makes thousands), not a new program, link or map,
    which come back as a new fd."""
    return b"".join(
        [
            mov64_reg(R6, R1),  # r6 = ctx
            call(BPF_FUNC_get_current_pid_tgid),
            rsh64_imm(R0, 32),  # the tgid
            jeq_imm(R0, own_tgid, 13),  # the guard itself: nothing to tell
            ldx_mem(4, R1, R6, SYSCALL_NR_OFFSET),
            ldx_mem(8, R2, R6, RET_OFFSET),
            insn(BPF_JMP | BPF_JSLT | BPF_K, R2, off=10, imm=0),  # failed
            insn(BPF_JMP | BPF_JNE | BPF_K, R1, off=1, imm=bpf.NR_BPF),
            jeq_imm(R2, 0, 8),  # bpf(2) returned 0: a query
            stx_mem(8, R10, R1, -8),
            ld_map_fd(R1, ring_fd),  # two slots
            mov64_reg(R2, R10),
            add64_imm(R2, -8),
            mov64_imm(R3, 8),
            mov64_imm(R4, 0),  # flags 0: the kernel wakes the reader
            call(BPF_FUNC_ringbuf_output),
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    )


def _perf_tracepoint(tp_id: int) -> int:
    """A perf event on tracepoint `tp_id` (PERF_ATTR_SIZE_VER0 attr); its program runs on every
    CPU, whichever CPU the event is opened on."""
    attr = ctypes.create_string_buffer(struct.pack("<IIQQ", PERF_TYPE_TRACEPOINT, 64, tp_id, 1), 64)
    fd = _libc.syscall(NR_PERF_EVENT_OPEN, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise KernelAccessError("perf_event_open(tracepoint)", explain_errno(err))
    return int(fd)


class KernelEvents:
    """The ring buffer and the program feeding it; `fileno()` is readable when an event is in.
    close() detaches and frees everything."""

    def __init__(self, ring_fd: int, ring: mmap.mmap, consumer: mmap.mmap) -> None:
        self.ring_fd, self._ring, self._consumer = ring_fd, ring, consumer
        self.prog_fd = -1
        self.perf_fds: list[int] = []
        self.attached: list[str] = []
        self.map_id = map_info(ring_fd).map_id
        self.prog_id = 0
        self.events = 0  # doorbells read so far

    @classmethod
    def open(cls) -> KernelEvents:
        """Load and attach; KernelAccessError says why not (then the guard only polls)."""
        ensure_mounted("tracefs")
        ring_fd = bpf.map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, RING_SIZE, MAP_NAME)
        try:
            consumer, ring = _map_positions(ring_fd)
            events = cls(ring_fd, ring, consumer)
        except BaseException:
            os.close(ring_fd)  # a mapping made is unmapped when its object goes
            raise
        try:
            events._attach()
        except BaseException:
            events.close()
            raise
        return events

    def _attach(self) -> None:
        self.prog_fd = bpf.prog_load(
            BPF_PROG_TYPE_TRACEPOINT, wake_program(self.ring_fd, os.getpid()), PROG_NAME
        )
        self.prog_id = prog_info(self.prog_fd).prog_id
        for name in TRACEPOINTS:
            with contextlib.suppress(OSError, ValueError):
                tp_id = int((SYSCALL_EVENTS / name / "id").read_text())
                fd = _perf_tracepoint(tp_id)
                self.perf_fds.append(fd)
                fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, self.prog_fd)
                fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
                self.attached.append(name)
        if not self.attached:
            raise KernelAccessError(str(SYSCALL_EVENTS), "no syscall exit tracepoint to attach")

    def fileno(self) -> int:
        return self.ring_fd

    def drain(self) -> int:
        """Mark every event read; how many there were (each is 16 bytes: header and nr)."""
        producer = struct.unpack_from("<Q", self._ring, 0)[0]
        consumer = struct.unpack_from("<Q", self._consumer, 0)[0]
        struct.pack_into("<Q", self._consumer, 0, producer)
        count = int(producer - consumer) // 16
        self.events += count
        return count

    def close(self) -> None:
        for fd in self.perf_fds:
            os.close(fd)  # detaches the program from that tracepoint
        self.perf_fds = []
        if self.prog_fd >= 0:
            os.close(self.prog_fd)
            self.prog_fd = -1
        self._ring.close()
        self._consumer.close()
        if self.ring_fd >= 0:
            os.close(self.ring_fd)
            self.ring_fd = -1


def _map_positions(ring_fd: int) -> tuple[mmap.mmap, mmap.mmap]:
    """The consumer position (a page ours to write), then the producer position (read-only);
    KernelAccessError if the ring cannot be mapped."""
    page = mmap.PAGESIZE
    try:
        consumer = mmap.mmap(ring_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise KernelAccessError("ring buffer mmap", str(exc)) from exc
    try:
        return consumer, mmap.mmap(ring_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
    except OSError as exc:
        consumer.close()
        raise KernelAccessError("ring buffer mmap", str(exc)) from exc


class Doorbell(Protocol):
    """What the guard waits on besides its signals: readable when told of a change."""

    def fileno(self) -> int: ...

    def drain(self) -> int: ...


class Waiter:
    """Waits up to a timeout for a doorbell (the ring buffer, the control-file watch) or a
    wake-up (a signal's byte on a pipe)."""

    def __init__(self) -> None:
        self.events: KernelEvents | None = None
        self._poll = select.epoll()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._read, select.EPOLLIN)
        self._doorbells: dict[int, tuple[str, Doorbell]] = {}
        self._last_event = 0.0

    def watch(self, events: KernelEvents) -> None:
        self.events = events
        self.listen("ringbuf", events)

    def listen(self, name: str, doorbell: Doorbell) -> None:
        """`wait` ends when `doorbell` is readable, and says `name`."""
        self._doorbells[doorbell.fileno()] = (name, doorbell)
        self._poll.register(doorbell.fileno(), select.EPOLLIN)

    def wake(self) -> None:
        """Safe in a signal handler: one write to a non-blocking pipe."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"x")

    def wait(self, timeout: float) -> str:
        """ "signal" if woken, the name of the first doorbell that rang (each rung one is
        drained), else "poll"."""
        ready = {fd for fd, _ in self._poll.poll(timeout)}
        if self._read in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._read, 4096)
            return "signal"
        rung = [self._doorbells[fd] for fd in self._doorbells if fd in ready]
        if not rung:
            return "poll"
        time.sleep(max(0.0, self._last_event + MIN_GAP - time.monotonic()))
        self._last_event = time.monotonic()
        for _, doorbell in rung:
            doorbell.drain()
        return rung[0][0]

    def close(self) -> None:
        self._poll.close()
        os.close(self._read)
        os.close(self._write)
