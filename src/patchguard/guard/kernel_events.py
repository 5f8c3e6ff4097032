"""Told by the kernel: the guard's own BPF program on the syscall-exit tracepoints of the calls
that add hooks (bpf, perf_event_open, init_module, finit_module) or remove a module
(delete_module) writes to a ring buffer
(BPF_MAP_TYPE_RINGBUF) the guard waits on with epoll, so a new BPF program or link, module,
kprobe or ftrace user wakes the trigger check at once instead of at the next poll.

The program is built from raw instructions like the memory reader (kernel/bpf/reader.py) and
attached the way perf tools attach a tracepoint program (perf_event_open + PERF_EVENT_IOC_SET_BPF).
It leaves out the guard's own process (its trigger checks call bpf(2): each would wake it
again). A bpf(2) wakes it only for the commands that add, change or remove a hook (WAKE_CMDS):
a second program, on the bpf syscall's entry, marks the thread's call in a hash map when its
command is one of them, and the exit program writes only for a marked call, so the queries of
scanners and agents (ids, infos, fds by id: thousands a scan) wake nothing.
The ring buffer is only a doorbell: what changed is still read by the triggers; where none of
this loads (no tracefs syscall events, no BPF), polling is the fallback.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    BPF_JA,
    BPF_JMP,
    BPF_K,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R8,
    R9,
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
BPF_MAP_TYPE_LRU_HASH = 9  # a mark whose exit never came (a guard started mid-call) ages out
BPF_FUNC_map_update_elem = 2
BPF_FUNC_map_delete_elem = 3
BPF_FUNC_get_current_pid_tgid = 14
BPF_FUNC_ringbuf_output = 130
PROG_NAME = "pg_guard_wake"  # named in policy/manifests/patchguard-guard.toml
CMD_PROG_NAME = "pg_guard_bpfcmd"  # likewise
MAP_NAME = "pg_guard_events"
CMDS_MAP_NAME = "pg_guard_bpfcmd"
CMDS_ENTRIES = 1024  # threads inside a marked bpf(2) at once
# bpf(2) commands that add, change or remove a hook (enum bpf_cmd): PROG_LOAD, PROG_ATTACH,
# PROG_DETACH, RAW_TRACEPOINT_OPEN, BTF_LOAD, LINK_CREATE, LINK_UPDATE, LINK_DETACH.
WAKE_CMDS = (5, 8, 9, 17, 18, 28, 29, 34)
ENTER_BPF = "sys_enter_bpf"
RING_SIZE = 16384  # 1,024 events of 16 bytes (header, nr, tgid); a full ring loses only doorbells
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
# (events/syscalls/sys_exit_bpf/format); sys_enter_bpf's int cmd is at 16 too.
SYSCALL_NR_OFFSET, RET_OFFSET, CMD_OFFSET = 8, 16, 16
RECORD = struct.Struct("<II")  # what the exit program writes: the syscall number and the tgid
BUSY, DISCARDED = 1 << 31, 1 << 30  # bits of a ring record's length word
BPF_JNE, BPF_JSLT = 0x50, 0xC0
# Trigger checks at most this often however busy the ring: a storm of hook calls costs a
# bounded share of a core, and a new hook waits at most this long for its check.
MIN_GAP = 0.05

_libc = ctypes.CDLL(None, use_errno=True)


def wake_program(ring_fd: int, cmds_fd: int, own_tgid: int) -> bytes:
    """On a syscall exit that may have changed a hook, by any process but the guard, put the
    syscall number and the caller's tgid in the ring. Failed calls are left out, and so is a
    bpf(2) whose command the entry program did not mark (its mark is taken off either way)."""
    return b"".join(
        [
            mov64_reg(R6, R1),  # r6 = ctx
            call(BPF_FUNC_get_current_pid_tgid),
            mov64_reg(R7, R0),  # r7 = pid_tgid, the mark's key
            rsh64_imm(R0, 32),  # the tgid
            jeq_imm(R0, own_tgid, 21),  # the guard itself: nothing to tell
            ldx_mem(4, R8, R6, SYSCALL_NR_OFFSET),
            insn(BPF_JMP | BPF_JNE | BPF_K, R8, off=7, imm=bpf.NR_BPF),  # on to the ret check
            stx_mem(8, R10, R7, -8),
            ld_map_fd(R1, cmds_fd),  # two slots
            mov64_reg(R2, R10),
            add64_imm(R2, -8),
            call(BPF_FUNC_map_delete_elem),
            insn(BPF_JMP | BPF_JNE | BPF_K, R0, off=12, imm=0),  # not marked: a query
            ldx_mem(8, R9, R6, RET_OFFSET),  # the ret check
            insn(BPF_JMP | BPF_JSLT | BPF_K, R9, off=10, imm=0),  # failed
            stx_mem(4, R10, R8, -8),
            rsh64_imm(R7, 32),
            stx_mem(4, R10, R7, -4),
            ld_map_fd(R1, ring_fd),  # two slots
            mov64_reg(R2, R10),
            add64_imm(R2, -8),
            mov64_imm(R3, RECORD.size),
            mov64_imm(R4, 0),  # flags 0: the kernel wakes the reader
            call(BPF_FUNC_ringbuf_output),
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    )


def bpf_cmd_program(cmds_fd: int, own_tgid: int) -> bytes:
    """On the entry of a bpf(2) whose command is in WAKE_CMDS, by any process but the guard,
    mark the calling thread (pid_tgid -> cmd) for the exit program."""
    matches = [jeq_imm(R1, cmd, len(WAKE_CMDS) - i) for i, cmd in enumerate(WAKE_CMDS)]
    return b"".join(
        [
            mov64_reg(R6, R1),
            call(BPF_FUNC_get_current_pid_tgid),
            mov64_reg(R7, R0),
            rsh64_imm(R0, 32),
            jeq_imm(R0, own_tgid, len(WAKE_CMDS) + 12),
            ldx_mem(4, R1, R6, CMD_OFFSET),
            *matches,
            insn(BPF_JMP | BPF_JA, off=10),  # no match: nothing to mark
            stx_mem(4, R10, R1, -16),  # the value: the command
            stx_mem(8, R10, R7, -8),  # the key: the thread
            ld_map_fd(R1, cmds_fd),  # two slots
            mov64_reg(R2, R10),
            add64_imm(R2, -8),
            mov64_reg(R3, R10),
            add64_imm(R3, -16),
            mov64_imm(R4, 0),  # BPF_ANY
            call(BPF_FUNC_map_update_elem),
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
    """The ring buffer and the programs feeding it; `fileno()` is readable when an event is in.
    close() detaches and frees everything."""

    def __init__(self, ring_fd: int, ring: RingMappings) -> None:
        self.ring_fd, self._ring = ring_fd, ring
        self.cmds_fd = -1
        self.prog_fd = self.cmd_prog_fd = -1
        self.perf_fds: list[int] = []
        self.attached: list[str] = []
        self.map_id = map_info(ring_fd).map_id
        self.cmds_map_id = 0
        self.prog_id = self.cmd_prog_id = 0
        self.events = 0  # doorbells read so far

    @classmethod
    def open(cls) -> KernelEvents:
        """Load and attach; KernelAccessError says why not (then the guard only polls)."""
        ensure_mounted("tracefs")
        ring_fd = bpf.map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, RING_SIZE, MAP_NAME)
        try:
            events = cls(ring_fd, RingMappings.of(ring_fd))
        except BaseException:
            os.close(ring_fd)  # a mapping made is unmapped when its object goes
            raise
        try:
            events._load()
            events._attach()
        except BaseException:
            events.close()
            raise
        return events

    @property
    def own_prog_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.prog_id, self.cmd_prog_id) if i)

    @property
    def own_map_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.map_id, self.cmds_map_id) if i)

    def _load(self) -> None:
        self.cmds_fd = bpf.map_create(BPF_MAP_TYPE_LRU_HASH, 8, 4, CMDS_ENTRIES, CMDS_MAP_NAME)
        self.cmds_map_id = map_info(self.cmds_fd).map_id
        own = os.getpid()
        self.prog_fd = bpf.prog_load(
            BPF_PROG_TYPE_TRACEPOINT, wake_program(self.ring_fd, self.cmds_fd, own), PROG_NAME
        )
        self.prog_id = prog_info(self.prog_fd).prog_id
        self.cmd_prog_fd = bpf.prog_load(
            BPF_PROG_TYPE_TRACEPOINT, bpf_cmd_program(self.cmds_fd, own), CMD_PROG_NAME
        )
        self.cmd_prog_id = prog_info(self.cmd_prog_fd).prog_id

    def _attach(self) -> None:
        # The entry's marks first: a bpf(2) is told of only once both are on.
        self._attach_one(ENTER_BPF, self.cmd_prog_fd)
        for name in TRACEPOINTS:
            self._attach_one(name, self.prog_fd)
        if not any(name.startswith("sys_exit_") for name in self.attached):
            raise KernelAccessError(str(SYSCALL_EVENTS), "no syscall exit tracepoint to attach")

    def _attach_one(self, name: str, prog_fd: int) -> None:
        """Attach `prog_fd` to syscall tracepoint `name`; one this kernel lacks is skipped."""
        with contextlib.suppress(OSError, ValueError):
            tp_id = int((SYSCALL_EVENTS / name / "id").read_text())
            fd = _perf_tracepoint(tp_id)
            self.perf_fds.append(fd)
            fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
            fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
            self.attached.append(name)

    def fileno(self) -> int:
        return self.ring_fd

    def drain(self) -> int:
        """Mark every event read; how many there were."""
        count = len(self.records())
        self.events += count
        return count

    def records(self) -> list[tuple[int, int]]:
        """Every event not read yet, (syscall number, tgid), marked read."""
        return self._ring.take()

    def close(self) -> None:
        for fd in self.perf_fds:
            os.close(fd)  # detaches the program from that tracepoint
        self.perf_fds = []
        for fd in (self.prog_fd, self.cmd_prog_fd, self.cmds_fd):
            if fd >= 0:
                os.close(fd)
        self.prog_fd = self.cmd_prog_fd = self.cmds_fd = -1
        self._ring.close()
        if self.ring_fd >= 0:
            os.close(self.ring_fd)
            self.ring_fd = -1


def _mapped(ring_fd: int, length: int, offset: int, writable: bool = False) -> mmap.mmap:
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        return mmap.mmap(ring_fd, length, mmap.MAP_SHARED, prot, offset=offset)
    except OSError as exc:
        raise KernelAccessError("ring buffer mmap", str(exc)) from exc


@dataclass(frozen=True)
class RingMappings:
    """The ring buffer as user space maps it: the consumer position (a page ours to write), the
    producer position, and the data pages, mapped twice in a row by the kernel so that a record
    that wraps reads straight on."""

    consumer: mmap.mmap
    producer: mmap.mmap
    data: mmap.mmap

    @classmethod
    def of(cls, ring_fd: int) -> RingMappings:
        """KernelAccessError if the ring cannot be mapped."""
        page = mmap.PAGESIZE
        made: list[mmap.mmap] = []
        try:
            made.append(_mapped(ring_fd, page, 0, writable=True))
            made.append(_mapped(ring_fd, page, page))
            made.append(_mapped(ring_fd, 2 * RING_SIZE, 2 * page))
        except KernelAccessError:
            for mapping in made:
                mapping.close()
            raise
        return cls(*made)

    def take(self) -> list[tuple[int, int]]:
        """The records from the consumer position to the producer's; the consumer moves on."""
        producer = struct.unpack_from("<Q", self.producer, 0)[0]
        at = struct.unpack_from("<Q", self.consumer, 0)[0]
        found: list[tuple[int, int]] = []
        while at < producer:
            length, _ = struct.unpack_from("<II", self.data, at % RING_SIZE)
            if length & BUSY:  # still being written: read at the next doorbell
                break
            if not length & DISCARDED and length >= RECORD.size:
                found.append(RECORD.unpack_from(self.data, at % RING_SIZE + 8))
            at += 8 + ((length & ~(BUSY | DISCARDED)) + 7) // 8 * 8
        struct.pack_into("<Q", self.consumer, 0, at)
        return found

    def close(self) -> None:
        for mapping in (self.data, self.producer, self.consumer):
            mapping.close()


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
