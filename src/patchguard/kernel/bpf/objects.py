"""eBPF objects as records: programs, links, maps and BTF objects, read through bpf(2).

Offsets are those of struct bpf_prog_info, bpf_link_info, bpf_map_info and bpf_btf_info in
include/uapi/linux/bpf.h (stable ABI: fields are only ever appended).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import BPF_CALL, BPF_JMP, BPF_PSEUDO_KFUNC_CALL, decode

PROG_INFO_SIZE = 232
LINK_INFO_SIZE = 96
MAP_INFO_SIZE = 80
BTF_INFO_SIZE = 32
FUNC_INFO_REC = 8  # struct bpf_func_info {insn_off, type_id}
MAX_PROBE_OFFSETS = 4096
NAME_BUF = 512
T = TypeVar("T")


@dataclass(frozen=True)
class CallSites:
    """What a program's xlated instructions call: helpers (as offsets from __bpf_call_base,
    which is how the kernel leaves them after fixup) and kfuncs (BTF ids)."""

    helper_offsets: tuple[int, ...]
    kfunc_btf_ids: tuple[int, ...]
    hidden: bool  # the kernel zeroed call targets: the reader lacks CAP_SYS_ADMIN/kptr rights


def call_sites(xlated: bytes) -> CallSites:
    helpers: list[int] = []
    kfuncs: list[int] = []
    zeroed = 0
    for code, _dst, src, _off, imm in decode(xlated):
        if code != BPF_JMP | BPF_CALL:
            continue
        if src == BPF_PSEUDO_KFUNC_CALL:
            kfuncs.append(imm)
        elif src == 0:
            helpers.append(imm)
            zeroed += imm == 0
    hidden = bool(helpers) and zeroed == len(helpers)
    return CallSites(tuple(dict.fromkeys(helpers)), tuple(dict.fromkeys(kfuncs)), hidden)


@dataclass(frozen=True)
class ProgInfo:
    prog_id: int
    prog_type: str
    name: str
    tag: str
    load_time_ns: int  # CLOCK_BOOTTIME at load
    created_by_uid: int
    map_ids: tuple[int, ...]
    btf_id: int
    jited_prog_len: int
    xlated_prog_len: int
    verified_insns: int
    attach_btf_obj_id: int
    attach_btf_id: int
    calls: CallSites
    func_type_id: int = 0  # the main function's BTF FUNC in btf_id: its full name


@dataclass(frozen=True)
class NetfilterAttach:
    """Where a BPF_NETFILTER link hooks: bpf_link_info.netfilter (pf is an NFPROTO_*)."""

    pf: int
    hooknum: int
    priority: int
    flags: int  # BPF_F_NETFILTER_IP_DEFRAG


@dataclass(frozen=True)
class LinkInfo:
    link_id: int
    link_type: str
    prog_id: int
    attach_type: str | None = None
    target: str | None = None  # tracepoint name, kprobe function, uprobe file, ifindex, ...
    target_obj_id: int = 0  # tracing: the BTF object that holds target_btf_id
    target_btf_id: int = 0
    netfilter: NetfilterAttach | None = None  # netfilter: the hook it runs on
    ifindex: int = 0  # xdp, tcx, netkit: the device (in the link's own network namespace)
    object_id: int = 0  # cgroup: its id (the cgroup2 inode); netns: its inode; sockmap: map id
    probe: UserProbe | None = None  # perf_event uprobes and uprobe_multi: file and offsets


@dataclass(frozen=True)
class UserProbe:
    """A user-space probe a link holds: uprobe or uretprobe, file, file offsets."""

    kind: str  # uprobe, uretprobe
    path: str
    offsets: tuple[int, ...]
    pid: int = 0  # uprobe_multi: only this process, 0 for all


@dataclass(frozen=True)
class MapInfo:
    map_id: int
    map_type: str
    name: str
    key_size: int
    value_size: int
    max_entries: int
    btf_id: int


@dataclass(frozen=True)
class BtfObject:
    btf_id: int
    name: str  # "vmlinux", a module name, or "" for a program's BTF
    kernel_btf: bool
    size: int


def _u32(raw: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", raw, off)[0])


def _u64(raw: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", raw, off)[0])


def prog_info(fd: int) -> ProgInfo:
    first = bpf.info_by_fd(fd, bytes(PROG_INFO_SIZE))
    xlated_len, nr_maps = _u32(first, 20), _u32(first, 52)
    insns = ctypes.create_string_buffer(max(xlated_len, 1))
    maps = ctypes.create_string_buffer(max(nr_maps, 1) * 4)
    template = bytearray(PROG_INFO_SIZE)
    struct.pack_into("<I", template, 20, xlated_len)
    struct.pack_into("<Q", template, 32, bpf.addr_of(insns) if xlated_len else 0)
    struct.pack_into("<I", template, 52, nr_maps)
    struct.pack_into("<Q", template, 56, bpf.addr_of(maps) if nr_maps else 0)
    funcs = ctypes.create_string_buffer(FUNC_INFO_REC)
    if _u32(first, 144):  # nr_func_info: the first record is the main function
        struct.pack_into("<IQI", template, 132, FUNC_INFO_REC, bpf.addr_of(funcs), 1)
    raw = bpf.info_by_fd(fd, bytes(template))
    nr_maps = min(nr_maps, _u32(raw, 52))
    return ProgInfo(
        prog_id=_u32(raw, 4),
        prog_type=bpf.enum_name(bpf.PROG_TYPES, _u32(raw, 0)),
        name=bpf.c_string(raw[64:80]),
        tag=raw[8:16].hex(),
        load_time_ns=_u64(raw, 40),
        created_by_uid=_u32(raw, 48),
        map_ids=struct.unpack_from(f"<{nr_maps}I", maps.raw) if nr_maps else (),
        btf_id=_u32(raw, 128),
        jited_prog_len=_u32(raw, 16),
        xlated_prog_len=xlated_len,
        verified_insns=_u32(raw, 216),
        attach_btf_obj_id=_u32(raw, 220),
        attach_btf_id=_u32(raw, 224),
        calls=call_sites(insns.raw[:xlated_len]),
        func_type_id=_u32(funcs.raw, 4) if _u32(first, 144) else 0,
    )


# Where each link type keeps its name pointer and length, inside the union at offset 16.
_NAME_FIELDS = {"raw_tracepoint": (16, 24), "iter": (16, 24), "uprobe_multi": (16, 48)}
_PERF_NAME_FIELDS = (24, 32)  # perf_event: uprobe file_name / kprobe func_name / tp_name
# Where each link type keeps its attach_type (enum bpf_attach_type).
_ATTACH_TYPE_AT = {"tracing": 16, "cgroup": 24, "netns": 20, "tcx": 20, "netkit": 20, "sockmap": 20}


def link_info(fd: int) -> LinkInfo:
    first = bpf.info_by_fd(fd, bytes(LINK_INFO_SIZE))
    link_type = bpf.enum_name(bpf.LINK_TYPES, _u32(first, 0))
    fields = _NAME_FIELDS.get(link_type)
    if link_type == "perf_event" and _u32(first, 16) != 0:
        fields = _PERF_NAME_FIELDS if _u32(first, 16) != 6 else None  # 6: a plain perf event
    name = ctypes.create_string_buffer(NAME_BUF)
    count = min(_u32(first, 52), MAX_PROBE_OFFSETS) if link_type == "uprobe_multi" else 0
    offsets = ctypes.create_string_buffer(max(count, 1) * 8)
    raw = first
    if fields is not None:
        template = bytearray(LINK_INFO_SIZE)
        if link_type == "perf_event":
            struct.pack_into("<I", template, 16, _u32(first, 16))
        if count:  # uprobe_multi.offsets and .count
            struct.pack_into("<Q", template, 24, bpf.addr_of(offsets))
            struct.pack_into("<I", template, 52, count)
        struct.pack_into("<Q", template, fields[0], bpf.addr_of(name))
        struct.pack_into("<I", template, fields[1], NAME_BUF)
        raw = bpf.info_by_fd(fd, bytes(template))
    link = _decode_link(raw, link_type, bpf.c_string(name.raw) if fields else None)
    if count:
        found = struct.unpack_from(f"<{count}Q", offsets.raw)
        link = replace(link, probe=replace(link.probe, offsets=found) if link.probe else None)
    return link


def _decode_link(raw: bytes, link_type: str, name: str | None) -> LinkInfo:
    link_id, prog_id = _u32(raw, 4), _u32(raw, 8)
    at = _ATTACH_TYPE_AT.get(link_type)
    attach = bpf.enum_name(bpf.ATTACH_TYPES, _u32(raw, at)) if at is not None else None
    if link_type == "tracing":
        return LinkInfo(
            link_id,
            link_type,
            prog_id,
            attach,
            None,
            target_obj_id=_u32(raw, 20),
            target_btf_id=_u32(raw, 24),
        )
    netfilter = None
    if link_type == "netfilter":
        netfilter = NetfilterAttach(*struct.unpack_from("<IIiI", raw, 16))
    target = _link_target(raw, link_type, name)
    ifindex = _u32(raw, 16) if link_type in ("xdp", "tcx", "netkit") else 0
    object_id = _link_object(raw, link_type)
    probe = _user_probe(raw, link_type, name)
    return LinkInfo(
        link_id,
        link_type,
        prog_id,
        attach,
        target,
        netfilter=netfilter,
        ifindex=ifindex,
        object_id=object_id,
        probe=probe,
    )


def _link_object(raw: bytes, link_type: str) -> int:
    if link_type == "cgroup":
        return _u64(raw, 16)
    return _u32(raw, 16) if link_type in ("netns", "sockmap") else 0


BPF_F_UPROBE_MULTI_RETURN = 1


def _user_probe(raw: bytes, link_type: str, name: str | None) -> UserProbe | None:
    """perf_event.uprobe {file_name, name_len, offset} and uprobe_multi {path, offsets, ...,
    path_size, count, flags, pid} (the offsets themselves are read by link_info)."""
    if name is None:
        return None
    if link_type == "perf_event":
        kind = bpf.enum_name(bpf.PERF_EVENT_TYPES, _u32(raw, 16))
        if kind in ("uprobe", "uretprobe"):
            return UserProbe(kind, name, (_u32(raw, 36),))
    if link_type == "uprobe_multi":
        ret = _u32(raw, 56) & BPF_F_UPROBE_MULTI_RETURN
        return UserProbe("uretprobe" if ret else "uprobe", name, (), pid=_u32(raw, 60))
    return None


def _link_target(raw: bytes, link_type: str, name: str | None) -> str | None:
    if link_type == "perf_event":
        kind = bpf.enum_name(bpf.PERF_EVENT_TYPES, _u32(raw, 16))
        if kind in ("kprobe", "kretprobe") and name is not None:
            offset = _u32(raw, 36)
            return f"{kind}:{name}" + (f"+{offset:#x}" if offset else "")
        if kind in ("uprobe", "uretprobe") and name is not None:
            return f"{kind}:{name}+{_u32(raw, 36):#x}"
        if kind == "event":
            return f"event:type={_u32(raw, 32)},config={_u64(raw, 24):#x}"
        return f"{kind}:{name}" if name is not None else kind
    if link_type in ("xdp", "tcx", "netkit"):
        return f"ifindex {_u32(raw, 16)}"
    if link_type == "cgroup":
        return f"cgroup {_u64(raw, 16)}"
    if link_type == "netns":
        return f"netns ino {_u32(raw, 16)}"
    if link_type in ("struct_ops", "sockmap"):
        return f"map {_u32(raw, 16)}"
    if link_type == "netfilter":
        pf, hook, prio = struct.unpack_from("<IIi", raw, 16)
        return f"netfilter pf {pf} hook {hook} priority {prio}"
    if link_type == "kprobe_multi":
        return f"kprobe_multi ({_u32(raw, 24)} functions)"
    if link_type == "raw_tracepoint" and name is not None:
        return f"raw_tracepoint:{name}"
    return name


def map_info(fd: int) -> MapInfo:
    raw = bpf.info_by_fd(fd, bytes(MAP_INFO_SIZE))
    return MapInfo(
        map_id=_u32(raw, 4),
        map_type=bpf.enum_name(bpf.MAP_TYPES, _u32(raw, 0)),
        name=bpf.c_string(raw[24:40]),
        key_size=_u32(raw, 8),
        value_size=_u32(raw, 12),
        max_entries=_u32(raw, 16),
        btf_id=_u32(raw, 64),
    )


def btf_info(fd: int) -> BtfObject:
    name = ctypes.create_string_buffer(NAME_BUF)
    template = bytearray(BTF_INFO_SIZE)
    struct.pack_into("<QI", template, 16, bpf.addr_of(name), NAME_BUF)
    raw = bpf.info_by_fd(fd, bytes(template))
    return BtfObject(_u32(raw, 12), bpf.c_string(name.raw), bool(_u32(raw, 28)), _u32(raw, 8))


@dataclass(frozen=True)
class ObjectKind:
    next_id_cmd: int
    fd_by_id_cmd: int
    label: str


PROG = ObjectKind(bpf.BPF_PROG_GET_NEXT_ID, bpf.BPF_PROG_GET_FD_BY_ID, "prog")
LINK = ObjectKind(bpf.BPF_LINK_GET_NEXT_ID, bpf.BPF_LINK_GET_FD_BY_ID, "link")
MAP = ObjectKind(bpf.BPF_MAP_GET_NEXT_ID, bpf.BPF_MAP_GET_FD_BY_ID, "map")
BTF = ObjectKind(bpf.BPF_BTF_GET_NEXT_ID, bpf.BPF_BTF_GET_FD_BY_ID, "btf")


def enumerate_objects(kind: ObjectKind, read: Callable[[int], T]) -> Iterator[T]:
    """Every live object of one kind. An id that vanished between GET_NEXT_ID and
    GET_FD_BY_ID (ENOENT) is skipped: objects come and go while we walk."""
    for obj_id in bpf.next_ids(kind.next_id_cmd, f"{kind.label.upper()}_GET_NEXT_ID"):
        try:
            fd = bpf.fd_by_id(kind.fd_by_id_cmd, obj_id, f"{kind.label.upper()}_GET_FD_BY_ID")
        except bpf.BpfError as exc:
            if exc.errno == 2:
                continue
            raise
        try:
            yield read(fd)
        finally:
            os.close(fd)


def all_progs() -> list[ProgInfo]:
    return list(enumerate_objects(PROG, prog_info))


def all_links() -> list[LinkInfo]:
    return list(enumerate_objects(LINK, link_info))


def all_maps() -> list[MapInfo]:
    return list(enumerate_objects(MAP, map_info))


def all_btf() -> list[BtfObject]:
    return list(enumerate_objects(BTF, btf_info))


MAX_PROG_BTF = 16 << 20  # a program's own BTF: types of its source, far below this


def btf_data(btf_id: int) -> bytes:
    """The raw BTF of one BTF object (a program's own, for its full function names)."""
    fd = bpf.fd_by_id(bpf.BPF_BTF_GET_FD_BY_ID, btf_id, "BTF_GET_FD_BY_ID")
    try:
        size = min(_u32(bpf.info_by_fd(fd, bytes(BTF_INFO_SIZE)), 8), MAX_PROG_BTF)
        data = ctypes.create_string_buffer(max(size, 1))
        template = bytearray(BTF_INFO_SIZE)
        struct.pack_into("<QI", template, 0, bpf.addr_of(data), size)
        bpf.info_by_fd(fd, bytes(template))
        return data.raw[:size]
    finally:
        os.close(fd)


MAX_PROG_ARRAY_SLOTS = 4096  # tail-call tables hold tens of programs; read no further


def prog_array_slots(map_id: int, max_entries: int) -> tuple[tuple[int, int], ...]:
    """(slot, prog_id) of each filled slot of a prog_array (a lookup from user space gives
    the id of the program in the slot; an empty slot is ENOENT)."""
    fd = bpf.fd_by_id(bpf.BPF_MAP_GET_FD_BY_ID, map_id, "MAP_GET_FD_BY_ID")
    found = []
    try:
        for slot in range(min(max_entries, MAX_PROG_ARRAY_SLOTS)):
            try:
                value = bpf.map_lookup(fd, struct.pack("<I", slot), 4)
            except bpf.BpfError as exc:
                if exc.errno == 2:
                    continue
                raise
            found.append((slot, _u32(value, 0)))
    finally:
        os.close(fd)
    return tuple(found)
