"""The bpf(2) system call through ctypes: object enumeration, info, and a small program loader.

No BCC, no libbpf, no bpftool: union bpf_attr and the *_info structs are packed by hand from
include/uapi/linux/bpf.h, sized to what this code reads (the kernel accepts a shorter info_len
and fills only what fits).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

from patchguard.kernel.errors import KernelAccessError, explain_errno

NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
ATTR_SIZE = 128  # enough for every command used here; the kernel zero-checks the tail

# enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_QUERY = 16
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_GET_FD_BY_ID = 19
BPF_TASK_FD_QUERY = 20
BPF_BTF_GET_NEXT_ID = 23
BPF_LINK_CREATE = 28
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_DETACH = 34
BPF_NETFILTER = 45  # enum bpf_attach_type

PROG_TYPES = [
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
    "netfilter",
]
MAP_TYPES = [
    "unspec",
    "hash",
    "array",
    "prog_array",
    "perf_event_array",
    "percpu_hash",
    "percpu_array",
    "stack_trace",
    "cgroup_array",
    "lru_hash",
    "lru_percpu_hash",
    "lpm_trie",
    "array_of_maps",
    "hash_of_maps",
    "devmap",
    "sockmap",
    "cpumap",
    "xskmap",
    "sockhash",
    "cgroup_storage",
    "reuseport_sockarray",
    "percpu_cgroup_storage",
    "queue",
    "stack",
    "sk_storage",
    "devmap_hash",
    "struct_ops",
    "ringbuf",
    "inode_storage",
    "task_storage",
    "bloom_filter",
    "user_ringbuf",
    "cgrp_storage",
    "arena",
]
LINK_TYPES = [
    "unspec",
    "raw_tracepoint",
    "tracing",
    "cgroup",
    "iter",
    "netns",
    "xdp",
    "perf_event",
    "kprobe_multi",
    "struct_ops",
    "netfilter",
    "tcx",
    "uprobe_multi",
    "netkit",
    "sockmap",
]
ATTACH_TYPES = [
    "cgroup_inet_ingress",
    "cgroup_inet_egress",
    "cgroup_inet_sock_create",
    "cgroup_sock_ops",
    "sk_skb_stream_parser",
    "sk_skb_stream_verdict",
    "cgroup_device",
    "sk_msg_verdict",
    "cgroup_inet4_bind",
    "cgroup_inet6_bind",
    "cgroup_inet4_connect",
    "cgroup_inet6_connect",
    "cgroup_inet4_post_bind",
    "cgroup_inet6_post_bind",
    "cgroup_udp4_sendmsg",
    "cgroup_udp6_sendmsg",
    "lirc_mode2",
    "flow_dissector",
    "cgroup_sysctl",
    "cgroup_udp4_recvmsg",
    "cgroup_udp6_recvmsg",
    "cgroup_getsockopt",
    "cgroup_setsockopt",
    "trace_raw_tp",
    "trace_fentry",
    "trace_fexit",
    "modify_return",
    "lsm_mac",
    "trace_iter",
    "cgroup_inet4_getpeername",
    "cgroup_inet6_getpeername",
    "cgroup_inet4_getsockname",
    "cgroup_inet6_getsockname",
    "xdp_devmap",
    "cgroup_inet_sock_release",
    "xdp_cpumap",
    "sk_lookup",
    "xdp",
    "sk_skb_verdict",
    "sk_reuseport_select",
    "sk_reuseport_select_or_migrate",
    "perf_event",
    "trace_kprobe_multi",
    "lsm_cgroup",
    "struct_ops",
    "netfilter",
    "tcx_ingress",
    "tcx_egress",
    "trace_uprobe_multi",
    "cgroup_unix_connect",
    "cgroup_unix_sendmsg",
    "cgroup_unix_recvmsg",
    "cgroup_unix_getpeername",
    "cgroup_unix_getsockname",
    "netkit_primary",
    "netkit_peer",
    "trace_kprobe_session",
    "trace_uprobe_session",
]
PERF_EVENT_TYPES = ["unspec", "uprobe", "uretprobe", "kprobe", "kretprobe", "tracepoint", "event"]
TASK_FD_TYPES = ["raw_tracepoint", "tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe"]


def enum_name(names: list[str], value: int) -> str:
    return names[value] if 0 <= value < len(names) else f"unknown({value})"


class BpfError(KernelAccessError):
    """A bpf(2) command failed; carries errno so callers can tell EPERM from ENOENT."""

    def __init__(self, command: str, err: int, detail: str = "") -> None:
        reason = explain_errno(err) + (f": {detail}" if detail else "")
        super().__init__(f"bpf({command})", reason)
        self.errno = err


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# The same syscall(2) without releasing the GIL. A released GIL is taken back only when the
# thread holding it lets go, up to the 5 ms switch interval later: for a bpf(2) command that
# takes microseconds (ids, fds, infos: hundreds per scan) beside a thread running Python, that
# wait is all the cost. Only lookups are that quick; everything else (verifying or running a
# program, attaching, detaching after an RCU grace period, bpffs) releases it.
_libc_held = ctypes.PyDLL(None, use_errno=True)
_libc_held.syscall.restype = ctypes.c_long
QUICK_COMMANDS = frozenset(
    {
        BPF_MAP_LOOKUP_ELEM,
        BPF_PROG_GET_NEXT_ID,
        BPF_MAP_GET_NEXT_ID,
        BPF_BTF_GET_NEXT_ID,
        BPF_LINK_GET_NEXT_ID,
        BPF_PROG_GET_FD_BY_ID,
        BPF_MAP_GET_FD_BY_ID,
        BPF_BTF_GET_FD_BY_ID,
        BPF_LINK_GET_FD_BY_ID,
        BPF_OBJ_GET_INFO_BY_FD,
        BPF_TASK_FD_QUERY,
        BPF_PROG_QUERY,
    }
)


def sys_bpf(cmd: int, attr: bytes | bytearray, name: str = "") -> tuple[int, bytes]:
    """Call bpf(cmd, attr); return (result, attr as the kernel left it) or raise BpfError."""
    buf = ctypes.create_string_buffer(bytes(attr).ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    libc = _libc_held if cmd in QUICK_COMMANDS else _libc
    ret = libc.syscall(NR_BPF, cmd, buf, ATTR_SIZE)
    if ret < 0:
        raise BpfError(name or str(cmd), ctypes.get_errno())
    return int(ret), buf.raw


def addr_of(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def next_ids(cmd: int, name: str) -> Iterator[int]:
    """Every id of one object kind (prog, map, link, btf), through *_GET_NEXT_ID."""
    current = 0
    while True:
        try:
            _, out = sys_bpf(cmd, struct.pack("<II", current, 0), name)
        except BpfError as exc:
            if exc.errno == 2:  # ENOENT: no id after `current`
                return
            raise
        current = struct.unpack_from("<I", out, 4)[0]
        yield current


def fd_by_id(cmd: int, obj_id: int, name: str) -> int:
    """An fd for the object with this id (the caller closes it)."""
    fd, _ = sys_bpf(cmd, struct.pack("<II", obj_id, 0), name)
    return fd


def info_by_fd(fd: int, template: bytes) -> bytes:
    """OBJ_GET_INFO_BY_FD into a copy of `template` (its size is info_len; input pointers such
    as xlated_prog_insns are pre-filled in it by the caller); returns what the kernel wrote."""
    info = ctypes.create_string_buffer(template, len(template))
    attr = struct.pack("<IIQ", fd, len(template), addr_of(info))
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "OBJ_GET_INFO_BY_FD")
    return info.raw


def c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_F_NO_PREALLOC = 1  # a hash map that allocates entries as they are added
BPF_F_MMAPABLE = 1 << 10  # an array whose values user space can mmap (5.5+)
BPF_F_RDONLY_PROG = 1 << 7  # programs may only read it (with BPF_MAP_FREEZE: a constant)
BPF_MAP_FREEZE = 22


def map_create(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str, flags: int = 0
) -> int:
    attr = struct.pack(
        "<IIIIIII16s", map_type, key_size, value_size, max_entries, flags, 0, 0, name.encode()[:15]
    )
    fd, _ = sys_bpf(BPF_MAP_CREATE, attr, "MAP_CREATE")
    return fd


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = struct.pack("<IIQQQ", map_fd, 0, addr_of(k), addr_of(v), 0)
    sys_bpf(BPF_MAP_LOOKUP_ELEM, attr, "MAP_LOOKUP_ELEM")
    return v.raw


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = struct.pack("<IIQQQ", map_fd, 0, addr_of(k), addr_of(v), 0)
    sys_bpf(BPF_MAP_UPDATE_ELEM, attr, "MAP_UPDATE_ELEM")


def map_keys(map_fd: int, key_size: int, limit: int) -> list[bytes]:
    """Every key of a map (MAP_GET_NEXT_KEY from none), at most `limit` of them."""
    keys: list[bytes] = []
    key = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    previous = 0  # NULL: the first key
    while len(keys) < limit:
        attr = struct.pack("<IIQQ", map_fd, 0, previous, addr_of(nxt))
        try:
            sys_bpf(BPF_MAP_GET_NEXT_KEY, attr, "MAP_GET_NEXT_KEY")
        except BpfError as exc:
            if exc.errno == errno.ENOENT:  # past the last key
                break
            raise
        keys.append(nxt.raw)
        ctypes.memmove(key, nxt, key_size)
        previous = addr_of(key)
    return keys


def map_drain(map_fd: int, key_size: int, value_size: int, limit: int) -> list[bytes]:
    """Every value of a hash map, deleting them as they are read (LOOKUP_AND_DELETE_BATCH,
    5.6+: one syscall per batch instead of three per entry); at most `limit` values."""
    batch = 4096
    keys = ctypes.create_string_buffer(key_size * batch)
    values = ctypes.create_string_buffer(value_size * batch)
    token_in, token_out = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
    found: list[bytes] = []
    start = 0  # NULL in_batch: from the first bucket
    while len(found) < limit:
        attr = struct.pack(
            "<QQQQIIQQ",
            start,
            addr_of(token_out),
            addr_of(keys),
            addr_of(values),
            batch,
            map_fd,
            0,
            0,
        )
        buf = ctypes.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
        ret = _libc.syscall(NR_BPF, BPF_MAP_LOOKUP_AND_DELETE_BATCH, buf, ATTR_SIZE)
        err = ctypes.get_errno() if ret < 0 else 0
        if ret < 0 and err != errno.ENOENT:  # ENOENT: the last batch (count says how many)
            raise BpfError("MAP_LOOKUP_AND_DELETE_BATCH", err)
        count = struct.unpack_from("<I", buf.raw, 32)[0]
        raw = values.raw
        found += [raw[i * value_size : (i + 1) * value_size] for i in range(count)]
        if ret < 0:
            break
        ctypes.memmove(token_in, token_out, 8)
        start = addr_of(token_in)
    return found


def map_delete(map_fd: int, key: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    sys_bpf(BPF_MAP_DELETE_ELEM, struct.pack("<IIQ", map_fd, 0, addr_of(k)), "MAP_DELETE_ELEM")


class MapReader:
    """MAP_LOOKUP_ELEM of one key, again and again, with buffers made once (a hot path: the
    memory reader calls it for every chunk it reads)."""

    def __init__(self, map_fd: int, key: bytes, value_size: int) -> None:
        self._key = ctypes.create_string_buffer(key, len(key))
        self._value = ctypes.create_string_buffer(value_size)
        attr = struct.pack("<IIQQQ", map_fd, 0, addr_of(self._key), addr_of(self._value), 0)
        self._attr = ctypes.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)

    def __call__(self) -> bytes:
        if _libc_held.syscall(NR_BPF, BPF_MAP_LOOKUP_ELEM, self._attr, ATTR_SIZE) < 0:
            raise BpfError("MAP_LOOKUP_ELEM", ctypes.get_errno())
        return self._value.raw


def verifier_reason(log: str) -> str:
    """The verifier's reason for a refusal: its last line that is not the statistics it
    prints at the end ("processed N insns ...", "verification time ...")."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    reasons = [
        line
        for line in lines
        if not line.startswith(("processed ", "verification time", "stack depth"))
    ]
    return reasons[-1] if reasons else ""


def prog_load(
    prog_type: int,
    insns: bytes,
    name: str,
    license: str = "GPL",
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
    prog_flags: int = 0,
) -> int:
    """Load a program; on failure the verifier's log is part of the error."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(1 << 16)
    attr = bytearray(ATTR_SIZE)
    struct.pack_into(
        "<IIQQIIQ",
        attr,
        0,
        prog_type,
        len(insns) // 8,
        addr_of(code),
        addr_of(lic),
        1,
        len(log),
        addr_of(log),
    )
    struct.pack_into("<I", attr, 44, prog_flags)
    struct.pack_into("<16s", attr, 48, name.encode()[:15])
    struct.pack_into("<I", attr, 68, expected_attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    buf = ctypes.create_string_buffer(bytes(attr), ATTR_SIZE)
    ret = _libc.syscall(NR_BPF, BPF_PROG_LOAD, buf, ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError("PROG_LOAD", err, verifier_reason(log.value.decode(errors="replace")))
    return int(ret)


def prog_test_run(prog_fd: int, ctx: bytes) -> int:
    """Run a program once with `ctx` (raw tracepoints: the u64 args); return its r0.

    For raw tracepoints the kernel wants repeat = 0 and no data_in, only ctx_in."""
    return _test_run(prog_fd, ctx)[0]


def syscall_prog_run(prog_fd: int, ctx: bytes) -> bytes:
    """Run a BPF_PROG_TYPE_SYSCALL program once with `ctx`; return the ctx as it left it (the
    kernel copies a syscall program's ctx back: its retval is only 32 bits, and ctx_out is
    refused)."""
    return _test_run(prog_fd, ctx)[1]


def _test_run(prog_fd: int, ctx: bytes) -> tuple[int, bytes]:
    c = ctypes.create_string_buffer(ctx, len(ctx))
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("<I", attr, 0, prog_fd)
    # ctx_size_in, ctx_in (NULL for no ctx: the kernel refuses a pointer to nothing)
    struct.pack_into("<IIQ", attr, 40, len(ctx), 0, addr_of(c) if ctx else 0)
    _, out = sys_bpf(BPF_PROG_TEST_RUN, attr, "PROG_TEST_RUN")
    return int(struct.unpack_from("<i", out, 4)[0]), c.raw


class PreparedTestRun:
    """BPF_PROG_TEST_RUN of one program, its attr and ctx buffers built once: a caller that
    runs it many times a sweep (the page hasher: ~24 runs) packs only the ctx each time.
    The syscall keeps the GIL (a run is about a millisecond): released, it is taken back only
    when another thread lets go, up to the 5 ms switch interval later, on every run. (A thread
    that SHA-256'd judged pages while the runs released the GIL made lab sweeps slower, 57.6
    against 51.7 ms interleaved in one boot: it was not kept.)"""

    def __init__(self, prog_fd: int, ctx_size: int) -> None:
        self.ctx = ctypes.create_string_buffer(ctx_size)
        self._attr = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("<I", self._attr, 0, prog_fd)
        struct.pack_into("<IIQ", self._attr, 40, ctx_size, 0, addr_of(self.ctx))

    def run(self) -> int:
        """Run once with the ctx as it is now; the program's r0."""
        if _libc_held.syscall(NR_BPF, BPF_PROG_TEST_RUN, self._attr, ATTR_SIZE) < 0:
            raise BpfError("PROG_TEST_RUN", ctypes.get_errno())
        return int(struct.unpack_from("<i", self._attr, 4)[0])


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    tp = ctypes.create_string_buffer(name.encode())
    fd, _ = sys_bpf(
        BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", addr_of(tp), prog_fd), "RAW_TRACEPOINT_OPEN"
    )
    return fd


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    sys_bpf(BPF_OBJ_PIN, struct.pack("<QI", addr_of(p), fd), "OBJ_PIN")


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    fd, _ = sys_bpf(BPF_OBJ_GET, struct.pack("<QII", addr_of(p), 0, 0), "OBJ_GET")
    return fd


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """BPF_LINK_CREATE for the attach kinds that need only a target fd (netns, cgroup, ...)."""
    fd, _ = sys_bpf(
        BPF_LINK_CREATE, struct.pack("<IIII", prog_fd, target_fd, attach_type, 0), "LINK_CREATE"
    )
    return fd


def link_create_netfilter(
    prog_fd: int, pf: int, hooknum: int, priority: int, nf_flags: int = 0
) -> int:
    """BPF_LINK_CREATE with BPF_NETFILTER: link_create.netfilter {pf, hooknum, priority, flags}
    follows the common fields at offset 16; the hook goes into the caller's network namespace."""
    attr = struct.pack("<IIIIIIiI", prog_fd, 0, BPF_NETFILTER, 0, pf, hooknum, priority, nf_flags)
    fd, _ = sys_bpf(BPF_LINK_CREATE, attr, "LINK_CREATE")
    return fd


def link_detach(link_fd: int) -> None:
    sys_bpf(BPF_LINK_DETACH, struct.pack("<I", link_fd), "LINK_DETACH")


def task_fd_query(pid: int, fd: int) -> tuple[int, str, str, int, int]:
    """BPF_TASK_FD_QUERY: what program a task's perf event (or raw_tp) fd runs, and where:
    (prog_id, fd_type, name, probe_offset, probe_addr). ENOENT/ENOTSUPP: no program there."""
    name = ctypes.create_string_buffer(4096)
    attr = struct.pack("<IIIIQ", pid, fd, 0, len(name), addr_of(name))
    _, out = sys_bpf(BPF_TASK_FD_QUERY, attr, "TASK_FD_QUERY")
    prog_id, fd_type = struct.unpack_from("<II", out, 24)
    offset, addr = struct.unpack_from("<QQ", out, 32)
    return (
        prog_id,
        enum_name(TASK_FD_TYPES, fd_type),
        name.value.decode(errors="replace"),
        offset,
        addr,
    )


MAX_QUERY = 64  # programs on one hook: tcx and cgroups allow 64


def prog_query(
    target: int, attach_type: int, name: str = "PROG_QUERY"
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """BPF_PROG_QUERY: the program ids (and link ids, 0 where none) on one hook; `target` is
    an ifindex (tcx, netkit: in the caller's network namespace) or a cgroup or netns fd."""
    try:
        return _prog_query(target, attach_type, name, with_links=True)
    except BpfError as exc:
        if exc.errno != errno.EINVAL:
            raise
    # Before 6.6 the query has no link_ids: such a kernel refuses a nonzero field past the
    # ones it knows with EINVAL, which would read as "no such hook" and hide every program
    # attached there (systemd's cgroup firewall on 6.1). Asked again without it: no link ids.
    return _prog_query(target, attach_type, name, with_links=False)


def _prog_query(
    target: int, attach_type: int, name: str, with_links: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    progs = ctypes.create_string_buffer(MAX_QUERY * 4)
    links = ctypes.create_string_buffer(MAX_QUERY * 4)
    links_at = addr_of(links) if with_links else 0
    attr = struct.pack(
        "<IIIIQI4xQQ", target, attach_type, 0, 0, addr_of(progs), MAX_QUERY, 0, links_at
    )
    _, out = sys_bpf(BPF_PROG_QUERY, attr, name)
    count = min(struct.unpack_from("<I", out, 24)[0], MAX_QUERY)
    return (
        struct.unpack_from(f"<{count}I", progs.raw),
        struct.unpack_from(f"<{count}I", links.raw),
    )
