"""Another patchguard process's BPF programs: two scans (a guard and an operator's `scan`, say)
each load their own readers, iterators and one-shot lookups, and each must see the other's as
patchguard's, not as the host's, without letting anything else pass for them.

A program is another patchguard process's when both hold:
- every process holding it runs Python with patchguard's entry point on its command line
  (`-m patchguard.cli`, or the `patchguard` script), and one does at least: anyone can name a
  program `pg_...`, and the command line alone is only what a process says of itself;
- its tag (the kernel's hash of the bytecode as loaded, map references zeroed) is the tag of
  the bytecode patchguard itself loads under that name: the tag of this process's own program
  of the same name (the reader, iterators, symbolizer are the same bytes in every patchguard
  of this version on this kernel), or, for a one-shot lookup whose bytecode carries the name
  it looks up, the tag of the lookup program rebuilt from the name read back out of its
  instructions. The kernel hashes with SHA-256 since 6.18 and with SHA-1 before: both count.
A program another patchguard of a different version loaded has other bytes, and stays the
host's, as does one of a kind this process did not load (its surface did not run). A lookup a
patchguard process held and released before its instructions could be read is gone: it is
no one's to report, and is left out."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import R1, R3, R10, decode
from patchguard.kernel.bpf.iterators import TaskOffsets, task_iter_program
from patchguard.kernel.bpf.lookup import address_program, finder_program
from patchguard.kernel.bpf.objects import PROG_INFO_SIZE, ProgInfo, prog_info
from patchguard.kernel.bpf.text_hash import program as text_hash_program
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError

PREFIX = "pg_"  # every program patchguard loads is named so
LOOKUPS = ("pg_btf_find", "pg_ksym_addr")  # one-shot: the bytecode carries the name looked up
MAX_CMDLINE = 4096
LD_IMM64, STX_DW, MOV64_IMM = 0x18, 0x7B, 0xB7
PSEUDO_MAP = (1, 2)  # BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE: zeroed in the tag


def tags_of(program: bytes) -> set[str]:
    """The tags the kernel gives `program` (bpf_prog_calc_tag: map references zeroed; SHA-1
    before 6.18, SHA-256 since), as `bpftool prog` prints them."""
    out = bytearray(program)
    was_map = False
    for at in range(0, len(out) - 7, 8):
        code, regs, off, _imm = struct.unpack_from("<BBhi", out, at)
        if not was_map and code == LD_IMM64 and regs >> 4 in PSEUDO_MAP:
            was_map = True
        elif was_map and code == 0 and regs == 0 and off == 0:
            was_map = False
        else:
            was_map = False
            continue
        struct.pack_into("<i", out, at + 4, 0)
    data = bytes(out)
    return {hashlib.sha1(data).digest()[:8].hex(), hashlib.sha256(data).digest()[:8].hex()}


def is_patchguard(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether process `pid` is a patchguard process: Python running patchguard's CLI."""
    try:
        exe = os.readlink(proc / str(pid) / "exe")
        with (proc / str(pid) / "cmdline").open("rb") as f:
            argv = f.read(MAX_CMDLINE).split(b"\0")
    except OSError:
        return False
    if not os.path.basename(exe).startswith("python"):
        return False
    module = any(a == b"-m" and b == b"patchguard.cli" for a, b in itertools.pairwise(argv))
    return module or any(os.path.basename(a) == b"patchguard" for a in argv[:2])


class Gone(Exception):
    """The program was released after it was listed (a one-shot lookup lives microseconds)."""


def xlated(prog_id: int) -> bytes | None:
    """The program's instructions as the verifier left them; None if they cannot be read.
    Gone if the program no longer exists."""
    try:
        fd = bpf.fd_by_id(bpf.BPF_PROG_GET_FD_BY_ID, prog_id, "PROG_GET_FD_BY_ID")
    except bpf.BpfError as exc:
        if exc.errno == errno.ENOENT:
            raise Gone(prog_id) from None
        return None
    try:
        first = bpf.info_by_fd(fd, bytes(PROG_INFO_SIZE))
        size = struct.unpack_from("<I", first, 20)[0]
        insns = ctypes.create_string_buffer(max(size, 1))
        template = bytearray(PROG_INFO_SIZE)
        struct.pack_into("<I", template, 20, size)
        struct.pack_into("<Q", template, 32, bpf.addr_of(insns) if size else 0)
        bpf.info_by_fd(fd, bytes(template))
        return insns.raw[:size]
    except bpf.BpfError:
        return None
    finally:
        os.close(fd)


def lookup_program(prog_name: str, insns: bytes) -> bytes | None:
    """The lookup program (lookup.py) of this name that would carry the name these
    instructions put on the stack: what a one-shot `pg_btf_find` or `pg_ksym_addr` is
    rebuilt from; None for another name, or instructions that put no name there."""
    slots = decode(insns)
    words: list[int] = []
    kind = None
    for i, (code, dst, _src, _off, imm) in enumerate(slots[:-2]):
        after = slots[i + 2]
        if code == LD_IMM64 and dst == R1 and after[:3] == (STX_DW, R10, R1):
            words.append((imm & 0xFFFFFFFF) | (slots[i + 1][4] & 0xFFFFFFFF) << 32)
        if code == MOV64_IMM and dst == R3 and kind is None:
            kind = imm
    name = b"".join(w.to_bytes(8, "little") for w in words).split(b"\0", 1)[0]
    if not name:
        return None
    if prog_name == "pg_ksym_addr":
        return address_program(name)
    return finder_program(name, kind) if prog_name == "pg_btf_find" and kind is not None else None


def rebuilt_programs(name: str, btf: Btf | None) -> list[bytes]:
    """The bytecode patchguard loads under `name` that needs no instructions read back: the
    guard's page hasher, and the task iterator from this kernel's BTF (this process may have
    released its own before the ebpf surface looks: the processes surface runs beside it)."""
    if name == "pg_text_hash":  # the guard's sweeps (text_hash.py): no BTF needed
        return [text_hash_program(0, 0, 0)]
    if name != "pg_task_iter" or btf is None:
        return []
    try:
        off = TaskOffsets.from_btf(btf)
    except KernelAccessError:
        return []
    # with and without the map copy (the processes surface's); the tag leaves map fds out
    return [
        task_iter_program(off, probe_read, map_fd)
        for probe_read in (False, True)
        for map_fd in (-1, 0)
    ]


def verified(prog: ProgInfo, own: Iterable[ProgInfo], btf: Btf | None = None) -> bool:
    """Whether `prog`'s bytecode is patchguard's own (its tag; see the module docstring).
    Gone if it was released before its instructions could be read."""
    if not prog.name.startswith(PREFIX):
        return False
    if any(o.name == prog.name and o.tag == prog.tag for o in own):
        return True
    if (prog.name, prog.tag) in _REMEMBERED:
        return True
    if any(prog.tag in tags_of(p) for p in rebuilt_programs(prog.name, btf)):
        return True
    insns = xlated(prog.prog_id) if prog.name in LOOKUPS else None
    rebuilt = lookup_program(prog.name, insns) if insns is not None else None
    return rebuilt is not None and prog.tag in tags_of(rebuilt)


# (name, tag) of the programs this process loaded that it releases within a scan (the socket
# iterators): told at load time, while they are alive to be read.
_REMEMBERED: set[tuple[str, str]] = set()


def remember_own(prog_ids: Iterable[int]) -> None:
    """Note the name and tag of these programs of ours (loaded just now, still held)."""
    for prog_id in prog_ids:
        info = _info(prog_id)
        if info is not None:
            _REMEMBERED.add((info.name, info.tag))


def _info(prog_id: int) -> ProgInfo | None:
    try:
        fd = bpf.fd_by_id(bpf.BPF_PROG_GET_FD_BY_ID, prog_id, "PROG_GET_FD_BY_ID")
    except bpf.BpfError:
        return None
    try:
        return prog_info(fd)
    except bpf.BpfError:
        return None
    finally:
        os.close(fd)


def _own_programs(listed: list[ProgInfo], own_ids: set[int]) -> list[ProgInfo]:
    """This process's own programs: those listed, and those it loaded since the list was read
    (the scan's surfaces run side by side)."""
    own = [p for p in listed if p.prog_id in own_ids]
    later = [_info(i) for i in own_ids - {p.prog_id for p in own}]  # a lookup may be gone
    return own + [p for p in later if p is not None]


def peer_programs(
    progs: Iterable[ProgInfo],
    own_ids: set[int],
    holders: dict[int, set[int]],
    btf: Btf | None = None,
) -> tuple[dict[int, int], set[int]]:
    """(prog_id -> the pid of the patchguard process holding it, for every program that is
    another patchguard process's; the ids of those that patchguard processes held and that
    were released before they could be verified: gone, they are no one's to report).
    `holders`: prog_id -> pids of the processes holding it."""
    listed = list(progs)
    own = _own_programs(listed, own_ids)
    found: dict[int, int] = {}
    gone: set[int] = set()
    for prog in listed:
        pids = holders.get(prog.prog_id, set())
        if prog.prog_id in own_ids or not pids or not all(is_patchguard(p) for p in pids):
            continue
        try:
            if verified(prog, own, btf):
                found[prog.prog_id] = min(pids)
        except Gone:
            gone.add(prog.prog_id)
        except OSError:
            continue
    return found, gone
