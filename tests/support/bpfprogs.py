"""Real eBPF programs for the live tests, built from raw instructions (no compiler), and the
ways real tools attach them. Every attach returns an object whose close() detaches it; tests
use them in `with` blocks or fixtures so the kernel is left as it was, even on failure."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R10,
    add64_imm,
    call,
    exit_insn,
    mov64_imm,
    mov64_reg,
    st_mem,
)
from patchguard.kernel.bpf.objects import all_progs, prog_info
from patchguard.kernel.mounts import ensure_mounted

BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_SK_LOOKUP = 36  # enum bpf_attach_type
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY = 24
BPF_PROG_TYPE_LSM = 29
BPF_LSM_MAC = 27
BPF_FUNC_send_signal = 109
BPF_FUNC_get_current_pid_tgid = 14

NR_PERF_EVENT_OPEN = 298
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
TRACEFS = Path("/sys/kernel/tracing")

_libc = ctypes.CDLL(None, use_errno=True)


def return_zero() -> bytes:
    return mov64_imm(R0, 0) + exit_insn()


def calls_helper(helper_id: int, arg1: int = 0) -> bytes:
    """r1 = arg1; call helper; r0 = 0; exit."""
    return mov64_imm(R1, arg1) + call(helper_id) + return_zero()


@dataclass
class Loaded:
    """A loaded program and whatever keeps it attached; close() undoes all of it."""

    prog_fd: int
    prog_id: int
    fds: list[int] = field(default_factory=list)
    pin: str | None = None

    def close(self) -> None:
        for fd in [*self.fds, self.prog_fd]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.prog_fd = -1
        if self.pin is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pin)
            self.pin = None

    def __enter__(self) -> Loaded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(prog_type: int, insns: bytes, name: str, expected_attach_type: int = 0) -> Loaded:
    fd = bpf.prog_load(prog_type, insns, name, expected_attach_type=expected_attach_type)
    return Loaded(fd, prog_info(fd).prog_id)


def tracepoint_id(category: str, event: str) -> int:
    reason = ensure_mounted("tracefs")
    if reason:
        raise RuntimeError(reason)
    return int((TRACEFS / "events" / category / event / "id").read_text())


def perf_event_open_tracepoint(tp_id: int) -> int:
    # struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size, config, sample_period
    attr = ctypes.create_string_buffer(struct.pack("<IIQQ", PERF_TYPE_TRACEPOINT, 64, tp_id, 1), 64)
    fd = _libc.syscall(NR_PERF_EVENT_OPEN, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "perf_event_open")
    return int(fd)


def attach_tracepoint(
    category: str, event: str, name: str = "pg_test_tp", insns: bytes | None = None
) -> Loaded:
    """The way most tools attach a tracepoint program: perf_event_open + PERF_EVENT_IOC_SET_BPF
    (no BPF link object exists; the perf event fd keeps it attached)."""
    prog = load(BPF_PROG_TYPE_TRACEPOINT, insns or return_zero(), name)
    try:
        pfd = perf_event_open_tracepoint(tracepoint_id(category, event))
        prog.fds.append(pfd)
        fcntl.ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog.prog_fd)
        fcntl.ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0)
    except BaseException:
        prog.close()
        raise
    return prog


def attach_raw_tracepoint(tp_name: str, name: str = "pg_test_rawtp") -> Loaded:
    """A raw tracepoint through a BPF link (BPF_RAW_TRACEPOINT_OPEN)."""
    prog = load(BPF_PROG_TYPE_RAW_TRACEPOINT, return_zero(), name)
    try:
        prog.fds.append(bpf.raw_tracepoint_open(tp_name, prog.prog_fd))
    except BaseException:
        prog.close()
        raise
    return prog


def attach_sk_lookup(name: str = "pg_test_sklookup") -> Loaded:
    """An sk_lookup program that answers SK_PASS (the normal lookup goes on), attached to this
    network namespace through a BPF link: a link type that BPF_LINK_DETACH can detach."""
    prog = load(
        BPF_PROG_TYPE_SK_LOOKUP,
        mov64_imm(R0, 1) + exit_insn(),
        name,
        expected_attach_type=BPF_SK_LOOKUP,
    )
    try:
        netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            prog.fds.append(bpf.link_create(prog.prog_fd, netns, BPF_SK_LOOKUP))
        finally:
            os.close(netns)
    except BaseException:
        prog.close()
        raise
    return prog


def attach_lsm(hook: str, name: str = "pg_test_lsm") -> Loaded:
    """An LSM program on `bpf_lsm_<hook>` that returns 0 (allow), through a BPF link: the way
    security agents enforce policy. Needs `bpf` among the active LSMs (the lab's Debian kernel
    has it; these VMs refuse the load with EPERM)."""
    return _attach_btf(f"bpf_lsm_{hook}", BPF_PROG_TYPE_LSM, BPF_LSM_MAC, name)


def attach_fentry(function: str, name: str = "pg_test_fentry") -> Loaded:
    """An fentry program on a kernel function, through a BPF link (BPF_LINK_CREATE with
    BPF_TRACE_FENTRY): the kernel patches the function's ftrace site to call a BPF trampoline.
    `function` is a BTF name (`__do_sys_getppid`, not `__x64_sys_getppid`). Refused with EPERM
    on these VMs' kernel; the QEMU lab's Debian kernel allows it."""
    return _attach_btf(function, BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, name)


def _attach_btf(function: str, prog_type: int, attach_type: int, name: str) -> Loaded:
    """Load a program verified against BTF function `function` and attach it by a link."""
    from patchguard.kernel import Kernel

    btf_id = Kernel().vmlinux_btf.func_id(function)
    if btf_id is None:
        raise RuntimeError(f"no BTF FUNC named {function}")
    fd = bpf.prog_load(
        prog_type, return_zero(), name, expected_attach_type=attach_type, attach_btf_id=btf_id
    )
    prog = Loaded(fd, prog_info(fd).prog_id)
    try:
        prog.fds.append(bpf.link_create(prog.prog_fd, 0, attach_type))
    except BaseException:
        prog.close()
        raise
    return prog


def bpffs() -> str:
    """A mounted bpffs (mounted read-write at /sys/fs/bpf if there is none)."""
    from patchguard.kernel.bpf.owners import bpffs_mounts

    mounts = bpffs_mounts()
    if mounts:
        return mounts[0]
    reason = ensure_mounted_bpffs()
    if reason:
        raise RuntimeError(reason)
    return "/sys/fs/bpf"


def ensure_mounted_bpffs() -> str | None:
    rc = _libc.mount(b"bpf", b"/sys/fs/bpf", b"bpf", 0, None)
    return None if rc == 0 else os.strerror(ctypes.get_errno())


def pinned_orphan(name: str = "pg_test_pinned") -> Loaded:
    """A program pinned in bpffs whose loader has closed every fd: only the pin keeps it."""
    prog = load(BPF_PROG_TYPE_TRACEPOINT, return_zero(), name)
    path = os.path.join(bpffs(), f"patchguard-test-{os.getpid()}-{prog.prog_id}")
    try:
        bpf.obj_pin(prog.prog_fd, path)
    except BaseException:
        prog.close()
        raise
    prog.pin = path
    os.close(prog.prog_fd)
    prog.prog_fd = -1
    return prog


def tail_call_orphan(name: str = "pg_test_tail") -> Loaded:
    """A program kept alive only by a pinned prog_array (a tail-call table), the way a loader
    can leave a program behind with no fd, no pin and no link of its own."""
    prog = load(BPF_PROG_TYPE_TRACEPOINT, return_zero(), name)
    try:
        table = bpf.map_create(BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1, "pg_test_calls")
        prog.fds.append(table)
        bpf.map_update(table, struct.pack("<I", 0), struct.pack("<I", prog.prog_fd))
        path = os.path.join(bpffs(), f"patchguard-test-{os.getpid()}-calls-{prog.prog_id}")
        bpf.obj_pin(table, path)
        prog.pin = path
    except BaseException:
        prog.close()
        raise
    for fd in [prog.prog_fd, *prog.fds]:
        os.close(fd)
    prog.prog_fd, prog.fds = -1, []
    return prog


def wait_gone(prog_id: int, timeout: float = 5.0) -> bool:
    """True once the kernel no longer lists the program (raw_tp programs linger ~1 s after
    their last reference goes: the release is RCU-deferred)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prog_id not in {p.prog_id for p in all_progs()}:
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def loaded(prog: Loaded) -> Iterator[Loaded]:
    try:
        yield prog
    finally:
        prog.close()


BPF_PROG_TYPE_NETFILTER = 32  # enum bpf_prog_type (BPF_NETFILTER, the attach type, is 45)
NF_ACCEPT = 1


def attach_netfilter(
    pf: int, hooknum: int, priority: int, name: str = "pg_test_nf", pin: bool = False
) -> Loaded:
    """A netfilter program that answers NF_ACCEPT (traffic keeps flowing), hooked through a
    BPF_NETFILTER link into this network namespace's hook list `pf`/`hooknum` (an NFPROTO_* and
    an NF_INET_* hook) at `priority`: the way BPF firewalls hook. With `pin` the link is pinned
    in bpffs and every fd is closed, so only the pin keeps the hook. Needs 6.4+ and
    CONFIG_NETFILTER_BPF_LINK."""
    prog = load(
        BPF_PROG_TYPE_NETFILTER,
        mov64_imm(R0, NF_ACCEPT) + exit_insn(),
        name,
        expected_attach_type=bpf.BPF_NETFILTER,
    )
    try:
        link = bpf.link_create_netfilter(prog.prog_fd, pf, hooknum, priority)
        prog.fds.append(link)
        if pin:
            path = os.path.join(bpffs(), f"patchguard-test-{os.getpid()}-nf-{prog.prog_id}")
            bpf.obj_pin(link, path)
            prog.pin = path
            for fd in [prog.prog_fd, *prog.fds]:
                os.close(fd)
            prog.prog_fd, prog.fds = -1, []
    except BaseException:
        prog.close()
        raise
    return prog


BPF_PROG_TYPE_KPROBE = 2
BPF_PERF_EVENT = 41  # enum bpf_attach_type: BPF_LINK_CREATE on a perf event fd
BPF_TRACE_UPROBE_MULTI = 48
UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe")
PERF_ATTR_SIZE = 128


def perf_event_open_uprobe(path: str, offset: int, retprobe: bool = False) -> int:
    """A uprobe perf event on `path` at file offset `offset` (the uprobe PMU: config1 is the
    path pointer, config2 the offset; bit 0 of config makes it a uretprobe)."""
    pmu_type = int((UPROBE_PMU / "type").read_text())
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = bytearray(PERF_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, pmu_type, PERF_ATTR_SIZE, int(retprobe), 1)
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(name), offset)
    buf = ctypes.create_string_buffer(bytes(attr), PERF_ATTR_SIZE)
    fd = _libc.syscall(NR_PERF_EVENT_OPEN, buf, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "perf_event_open(uprobe)")
    return int(fd)


def attach_uprobe(path: str, offset: int, name: str = "pg_test_uprobe") -> Loaded:
    """A kprobe-type program on a uprobe through a BPF perf_event link (BPF_LINK_CREATE on the
    perf event fd), the way libbpf attaches uprobes on kernels without uprobe_multi."""
    prog = load(BPF_PROG_TYPE_KPROBE, return_zero(), name)
    try:
        pfd = perf_event_open_uprobe(path, offset)
        prog.fds.append(pfd)
        prog.fds.append(bpf.link_create(prog.prog_fd, pfd, BPF_PERF_EVENT))
    except BaseException:
        prog.close()
        raise
    return prog


def attach_uprobe_multi(path: str, offsets: list[int], name: str = "pg_test_umulti") -> Loaded:
    """A uprobe_multi link (6.6+): one link, several offsets in one file."""
    prog = load(BPF_PROG_TYPE_KPROBE, return_zero(), name, BPF_TRACE_UPROBE_MULTI)
    try:
        file = ctypes.create_string_buffer(os.fsencode(path))
        offs = (ctypes.c_uint64 * len(offsets))(*offsets)
        attr = struct.pack(
            "<IIIIQQQQIII",
            prog.prog_fd,
            0,
            BPF_TRACE_UPROBE_MULTI,
            0,
            ctypes.addressof(file),
            ctypes.addressof(offs),
            0,
            0,
            len(offsets),
            0,
            0,
        )
        fd, _ = bpf.sys_bpf(bpf.BPF_LINK_CREATE, attr, "LINK_CREATE")
        prog.fds.append(fd)
    except BaseException:
        prog.close()
        raise
    return prog


BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
XDP_PASS = 2
TC_ACT_OK = 0
BPF_FUNC_skb_store_bytes = 9
BPF_FUNC_l4_csum_replace = 11
BPF_FUNC_redirect = 23
BPF_FUNC_csum_diff = 28
BPF_FUNC_xdp_adjust_tail = 65


def xdp_backdoor() -> bytes:
    """An XDP program that calls what packet-rewriting backdoors call (xdp_adjust_tail by 0
    bytes, csum_diff over nothing: no packet changes) and passes every packet on."""
    return b"".join(
        [
            mov64_reg(R6, R1),
            mov64_reg(R1, R6),
            mov64_imm(R2, 0),
            call(BPF_FUNC_xdp_adjust_tail),
            *(mov64_imm(r, 0) for r in (R1, R2, R3, R4, R5)),
            call(BPF_FUNC_csum_diff),
            mov64_imm(R0, XDP_PASS),
            exit_insn(),
        ]
    )


def tc_rewriter() -> bytes:
    """A tc classifier that calls skb_store_bytes (at an offset past any packet: it fails),
    l4_csum_replace (a zero difference) and redirect (whose verdict it ignores), then lets
    every packet through (TC_ACT_OK)."""
    return b"".join(
        [
            mov64_reg(R6, R1),
            st_mem(8, R10, -8, 0),
            mov64_reg(R1, R6),
            mov64_imm(R2, 0x7FFF),
            mov64_reg(R3, R10),
            add64_imm(R3, -8),
            mov64_imm(R4, 1),
            mov64_imm(R5, 0),
            call(BPF_FUNC_skb_store_bytes),
            mov64_reg(R1, R6),
            *(mov64_imm(r, 0) for r in (R2, R3, R4, R5)),
            call(BPF_FUNC_l4_csum_replace),
            mov64_imm(R1, 0),
            mov64_imm(R2, 0),
            call(BPF_FUNC_redirect),
            mov64_imm(R0, TC_ACT_OK),
            exit_insn(),
        ]
    )


BPF_BTF_LOAD = 18
BPF_FUNC_tail_call = 12
BTF_KIND_INT, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO = 1, 12, 13


def func_btf(function: str) -> bytes:
    """A minimal BTF object describing one function `int function(void)`: what clang puts in a
    program's .BTF for its entry point, and where bpftool reads a program's full name."""
    strings = b"\0int\0" + function.encode() + b"\0"
    types = b"".join(
        [
            struct.pack("<IIII", 1, BTF_KIND_INT << 24, 4, (1 << 24) | 32),  # [1] int
            struct.pack("<III", 0, BTF_KIND_FUNC_PROTO << 24, 1),  # [2] int (void)
            struct.pack("<III", 5, BTF_KIND_FUNC << 24, 2),  # [3] function, static
        ]
    )
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def load_with_btf(prog_type: int, insns: bytes, function: str) -> Loaded:
    """A program whose BTF func_info names its entry point `function` in full (the kernel
    keeps only the first 15 characters as the program's name)."""
    blob = ctypes.create_string_buffer(func_btf(function))
    attr = struct.pack("<QQII", ctypes.addressof(blob), 0, len(blob.raw) - 1, 0)
    btf_fd, _ = bpf.sys_bpf(BPF_BTF_LOAD, attr, "BTF_LOAD")
    try:
        code = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(b"GPL")
        func_info = ctypes.create_string_buffer(struct.pack("<II", 0, 3), 8)
        raw = bytearray(bpf.ATTR_SIZE)
        struct.pack_into("<II", raw, 0, prog_type, len(insns) // 8)
        struct.pack_into("<QQ", raw, 8, ctypes.addressof(code), ctypes.addressof(lic))
        struct.pack_into("<16s", raw, 48, function.encode()[:15])
        struct.pack_into("<IIQI", raw, 72, btf_fd, 8, ctypes.addressof(func_info), 1)
        fd, _ = bpf.sys_bpf(bpf.BPF_PROG_LOAD, raw, "PROG_LOAD")
    finally:
        os.close(btf_fd)
    return Loaded(fd, prog_info(fd).prog_id)


def tail_caller(table_fd: int) -> bytes:
    """bpf_tail_call(ctx, table, 0); return 0 (when slot 0 is empty the call falls through)."""
    from patchguard.kernel.bpf.insn import ld_map_fd

    return ld_map_fd(R2, table_fd) + mov64_imm(R3, 0) + call(BPF_FUNC_tail_call) + return_zero()


def pinned_raw_tracepoint_link(tp_name: str, name: str = "pg_test_pinlink") -> Loaded:
    """A raw tracepoint program whose link is pinned in bpffs, every fd closed: only the pin
    keeps the hook (the way loaders leave hooks behind when they exit)."""
    prog = attach_raw_tracepoint(tp_name, name)
    try:
        path = os.path.join(bpffs(), f"patchguard-test-{os.getpid()}-link-{prog.prog_id}")
        bpf.obj_pin(prog.fds[0], path)
        prog.pin = path
    except BaseException:
        prog.close()
        raise
    for fd in [prog.prog_fd, *prog.fds]:
        os.close(fd)
    prog.prog_fd, prog.fds = -1, []
    return prog
