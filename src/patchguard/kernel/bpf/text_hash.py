"""Keyed page digests of kernel memory computed in the kernel: NH, the universal hash of UMAC
(RFC 4418, section 5), run by a BPF program over each 4 KiB page, under two secret keys at once.

Why: reading 19 MB of core text out of the kernel and SHA-256 hashing it in Python is most of
what a sweep costs (and under emulation, where SHA has no CPU instructions, nearly all of it).
A keyed hash the kernel computes leaves user space only a comparison of 16 bytes a page. NH
with 32-bit words: digest = sum over the page's 32-bit word pairs (m0 + k0 mod 2^32) *
(m1 + k1 mod 2^32) mod 2^64. For two different pages fixed before the key is drawn, the
digests collide with probability at most 2^-32 over a random key; the key is secret (it lives
in a map only root reaches) and drawn afresh, so a change made without knowing the key shows.
Two keys per pass let a guard chain sweeps: it compares under the key it drew last time and
keeps the digests under the next key (docs/guard.md says why that is as safe as SHA-256 for
change detection, and why a changed digest is then read again and SHA-256'd).

One run copies up to RANGES ranges of kernel memory (CHUNK_PAGES pages in all, 2 MiB), each with
one bpf_probe_read_kernel, one after another into a map value of up to CHUNK bytes, then
bpf_loop runs a callback per page that hashes it from that copy: so a caller that also reads the
copy (to SHA-256 it) gets digests of exactly the bytes it hashed, and a sweep of many small
regions (each module's text and tables) costs a few runs, not one or more per region. Each
range's copy says its own result, so a fault in one region fails only that one. bpf_loop wants
BTF for its callbacks (func_info), so the program carries a minimal BTF.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import time
from collections.abc import Sequence

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import (
    BPF_ALU,
    BPF_ALU64,
    BPF_JMP,
    BPF_K,
    BPF_X,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
    add64_imm,
    call,
    exit_insn,
    insn,
    jgt_imm,
    ld_map_value,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    rsh64_imm,
    stx_mem,
)
from patchguard.kernel.bpf.objects import map_info, prog_info
from patchguard.kernel.errors import KernelAccessError, explain_errno
from patchguard.kernel.memory import MemoryReadError

PAGE = 4096
WORDS = PAGE // 8


def _chunk_pages(text: str) -> int:
    """Pages one run copies and hashes: a power of two (the program masks indices with it).
    512 (2 MiB): in the lab, sweeps of 12 runs took 35.6-36.2 ms against 41.7 ms for 24 runs
    of 256, interleaved boots (bench/lkrg.py --chunk-pages); PG_CHUNK_PAGES sets it to measure."""
    pages = int(text) if text.isdigit() else 0
    if pages not in {1 << n for n in range(4, 11)}:
        raise ValueError(f"PG_CHUNK_PAGES={text!r}: a power of two from 16 to 1024")
    return pages


CHUNK_PAGES = _chunk_pages(os.environ.get("PG_CHUNK_PAGES", "512"))
CHUNK = CHUNK_PAGES * PAGE  # one test run: its ranges copied, then up to CHUNK_PAGES hashed
RANGES = 256  # ranges one run copies (each is a page at least: CHUNK_PAGES of them fill it)
RANGE = 32  # a range table entry: address, pages, page of the copy, status (u64 each)
OUT_PAGES = 16384  # digests kept per pass: 64 MiB of text
UNROLL = int(os.environ.get("PG_UNROLL", "16"))  # words hashed per turn of the page loop
DIGEST = 16  # two 64-bit NH values, one per key
KEYS = 2 * PAGE  # key A then key B, each one u64 per page word
PARAMS = KEYS + RANGES * RANGE  # the keys, then the range table

BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_FUNC_probe_read_kernel, BPF_FUNC_loop = 113, 181
BPF_PSEUDO_FUNC = 4
BPF_BTF_LOAD = 18
BPF_MUL, BPF_AND, BPF_LSH, BPF_ADD, BPF_MOV = 0x20, 0x50, 0x60, 0x00, 0xB0
BPF_JLT, BPF_JNE = 0xA0, 0x50
MASK64 = (1 << 64) - 1


def nh(page: bytes, key: bytes) -> int:
    """NH of one page under one 4 KiB key, as the program computes it (the reference)."""
    total = 0
    for (m,), (k,) in zip(
        struct.iter_unpack("<Q", page), struct.iter_unpack("<Q", key), strict=True
    ):
        low = ((m & 0xFFFFFFFF) + (k & 0xFFFFFFFF)) & 0xFFFFFFFF
        high = ((m >> 32) + (k >> 32)) & 0xFFFFFFFF
        total = (total + low * high) & MASK64
    return total


# --- the program ---------------------------------------------------------------------------------


def _alu32_reg(op: int, dst: int, src: int) -> bytes:
    return insn(BPF_ALU | op | BPF_X, dst, src)


def _alu64_reg(op: int, dst: int, src: int) -> bytes:
    return insn(BPF_ALU64 | op | BPF_X, dst, src)


def _alu64_imm(op: int, dst: int, imm: int) -> bytes:
    return insn(BPF_ALU64 | op | BPF_K, dst, imm=imm)


def _nh_word(acc: int, high_m: int, key_off: int) -> list[bytes]:
    """acc += (low(m) + low(k)) * (high(m) + high(k)), the 32-bit sums wrapping: m in r1, its
    high half in `high_m`, the key word at r9 + key_off."""
    return [
        ldx_mem(8, R2, R9, key_off),
        _alu32_reg(BPF_MOV, R3, R1),  # w3 = low(m), zero-extended
        _alu32_reg(BPF_ADD, R3, R2),  # w3 += low(k), mod 2^32
        rsh64_imm(R2, 32),  # high(k)
        _alu32_reg(BPF_ADD, R2, high_m),  # w2 = high(k) + high(m), mod 2^32
        _alu64_reg(BPF_MUL, R2, R3),
        _alu64_reg(BPF_ADD, acc, R2),
    ]


def _page_words(keys: int, unroll: int) -> list[bytes]:
    """Every word of the page at r8: `unroll` words per turn of a loop (no counter or branch
    per word), NH under key A into r0 and, with two keys, under key B into r7; r8 and r9
    move on by `unroll` words a turn, r6 counts the bytes done."""
    body: list[bytes] = []
    for word in range(unroll):
        off = 8 * word
        body += [ldx_mem(8, R1, R8, off), mov64_reg(R4, R1), rsh64_imm(R4, 32)]
        body += _nh_word(R0, R4, off)
        if keys == 2:
            body += _nh_word(R7, R4, PAGE + off)
    body += [add64_imm(R8, 8 * unroll), add64_imm(R9, 8 * unroll), add64_imm(R6, 8 * unroll)]
    back = -(len(body) + 1)
    return [mov64_imm(R6, 0), *body, insn(BPF_JMP | BPF_JLT | BPF_K, R6, off=back, imm=PAGE)]


def _page_callback(fds: tuple[int, int, int], keys: int, unroll: int) -> list[bytes]:
    """long cb(u64 index, u64 *first): hash page `index` of the copy under key A (and key B)
    into out[first + index] as (A, B); with one key B is A's digest (key B is key A then).
    Indices are masked so the verifier can bound every access."""
    buf_fd, keys_fd, out_fd = fds
    return [
        ldx_mem(8, R5, R2, 0),  # first output slot
        _alu64_imm(BPF_AND, R1, CHUNK_PAGES - 1),
        _alu64_reg(BPF_ADD, R5, R1),
        _alu64_imm(BPF_AND, R5, OUT_PAGES - 1),
        _alu64_imm(BPF_LSH, R5, 4),  # byte offset of the digest
        _alu64_imm(BPF_LSH, R1, 12),  # byte offset of the page in the copy
        ld_map_value(R8, buf_fd, 0),
        _alu64_reg(BPF_ADD, R8, R1),
        ld_map_value(R9, keys_fd, 0),
        mov64_imm(R0, 0),
        mov64_imm(R7, 0),
        *_page_words(keys, unroll),
        ld_map_value(R1, out_fd, 0),
        _alu64_reg(BPF_ADD, R1, R5),
        stx_mem(8, R1, R0, 0),
        stx_mem(8, R1, R7 if keys == 2 else R0, 8),
        mov64_imm(R0, 0),  # go on with the next page
        exit_insn(),
    ]


def _copy_callback(buf_fd: int, params_fd: int) -> list[bytes]:
    """long cb(u64 index, void *unused): copy range `index` of the table (address, bytes,
    offset in the copy, status) into the copy and write the helper's result (0 or -errno;
    -EINVAL for more than CHUNK bytes) into its status. The copy is 2 x CHUNK bytes: the
    offset is masked and the length bounded below CHUNK each, which is all the verifier can
    tell of two registers, and user space keeps the ranges inside CHUNK. The jgt at 7 goes
    to the status store at 15."""
    return [
        _alu64_imm(BPF_AND, R1, RANGES - 1),  # 0
        _alu64_imm(BPF_LSH, R1, 5),  # 1: RANGE bytes an entry
        ld_map_value(R6, params_fd, KEYS),  # 2-3: the range table, after the keys
        _alu64_reg(BPF_ADD, R6, R1),  # 4: this entry
        mov64_imm(R0, -22),  # 5
        ldx_mem(8, R2, R6, 8),  # 6: size
        jgt_imm(R2, CHUNK, 15 - 8),  # 7
        ldx_mem(8, R1, R6, 16),  # 8: where in the copy
        _alu64_imm(BPF_AND, R1, CHUNK - 1),  # 9
        ld_map_value(R3, buf_fd, 0),  # 10-11
        _alu64_reg(BPF_ADD, R1, R3),  # 12: dst
        ldx_mem(8, R3, R6, 0),  # 13: src
        call(BPF_FUNC_probe_read_kernel),  # 14
        stx_mem(8, R6, R0, 24),  # 15: status
        mov64_imm(R0, 0),  # 16: go on with the next range
        exit_insn(),  # 17
    ]


MAIN_SLOTS = 25  # the callbacks start right after main: the copy's, then the two page hashers


def _main(copy: int, one_key: int, two_keys: int) -> list[bytes]:
    """ctx args: ranges (<= RANGES, in the table), pages (<= CHUNK_PAGES, the ranges' sum),
    first output slot, keys (1 or 2). Copy each range, then hash each page of the copy; r0 is
    the number of pages hashed (each range's copy says its result in the table). Jump offsets
    count slots: the jgts at 2 and 11 go to the refusal at 23, the jne at 15 over the second
    page callback's ld_imm64; the callbacks are at `copy`, `one_key` and `two_keys`."""
    return [
        mov64_reg(R6, R1),  # 0
        ldx_mem(8, R1, R6, 0),  # 1: ranges
        jgt_imm(R1, RANGES, 23 - 3),  # 2
        insn(0x18, R2, BPF_PSEUDO_FUNC, imm=copy - 4) + insn(0),  # 3-4
        mov64_imm(R3, 0),  # 5: no context
        mov64_imm(R4, 0),  # 6
        call(BPF_FUNC_loop),  # 7
        ldx_mem(8, R1, R6, 16),  # 8: first output slot, on the stack for the callback
        stx_mem(8, R10, R1, -8),  # 9
        ldx_mem(8, R1, R6, 8),  # 10: pages
        jgt_imm(R1, CHUNK_PAGES, 23 - 12),  # 11
        insn(0x18, R2, BPF_PSEUDO_FUNC, imm=one_key - 13) + insn(0),  # 12-13
        ldx_mem(8, R3, R6, 24),  # 14: keys
        insn(BPF_JMP | BPF_JNE | BPF_K, R3, off=18 - 16, imm=2),  # 15
        insn(0x18, R2, BPF_PSEUDO_FUNC, imm=two_keys - 17) + insn(0),  # 16-17
        mov64_reg(R3, R10),  # 18
        add64_imm(R3, -8),  # 19
        mov64_imm(R4, 0),  # 20
        call(BPF_FUNC_loop),  # 21
        exit_insn(),  # 22
        mov64_imm(R0, -22),  # 23: -EINVAL, too many ranges or pages
        exit_insn(),  # 24
    ]


def program_parts(
    buf_fd: int, keys_fd: int, out_fd: int, unroll: int = UNROLL
) -> tuple[bytes, bytes, bytes, bytes]:
    """main, the copy callback, the one-key callback, the two-key callback (`keys_fd`: the
    map of the keys and the range table)."""
    if WORDS % unroll:
        raise ValueError(f"{unroll} words a turn do not divide a page's {WORDS}")
    fds = (buf_fd, keys_fd, out_fd)
    copy = b"".join(_copy_callback(buf_fd, keys_fd))
    one = b"".join(_page_callback(fds, 1, unroll))
    two = b"".join(_page_callback(fds, 2, unroll))
    at = [MAIN_SLOTS, MAIN_SLOTS + len(copy) // 8, MAIN_SLOTS + (len(copy) + len(one)) // 8]
    main = b"".join(_main(*at))
    assert len(main) == MAIN_SLOTS * 8
    return main, copy, one, two


def program(buf_fd: int, keys_fd: int, out_fd: int, unroll: int = UNROLL) -> bytes:
    return b"".join(program_parts(buf_fd, keys_fd, out_fd, unroll))


def _btf() -> bytes:
    """long pg_text_hash(void *ctx), and the static long (long index, void *ctx) callbacks
    pg_th_copy, pg_nh_page and pg_nh_page2."""
    strings = b"\0long\0ctx\0pg_text_hash\0index\0pg_nh_page\0pg_nh_page2\0pg_th_copy\0"
    names = (b"long", b"ctx", b"pg_text_hash", b"index", b"pg_nh_page", b"pg_nh_page2")
    off = {name: strings.index(b"\0" + name + b"\0") + 1 for name in (*names, b"pg_th_copy")}
    types = b"".join(
        [
            struct.pack("<IIII", off[b"long"], 1 << 24, 8, (1 << 24) | 64),  # [1] long
            struct.pack("<III", 0, 2 << 24, 0),  # [2] void *
            struct.pack("<III", 0, (13 << 24) | 1, 1) + struct.pack("<II", off[b"ctx"], 2),  # [3]
            struct.pack("<III", off[b"pg_text_hash"], (12 << 24) | 1, 3),  # [4] global
            struct.pack("<III", 0, (13 << 24) | 2, 1)
            + struct.pack("<IIII", off[b"index"], 1, off[b"ctx"], 2),  # [5]
            struct.pack("<III", off[b"pg_nh_page"], 12 << 24, 5),  # [6] static
            struct.pack("<III", off[b"pg_nh_page2"], 12 << 24, 5),  # [7] static
            struct.pack("<III", off[b"pg_th_copy"], 12 << 24, 5),  # [8] static
        ]
    )
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


# --- loading and running it ----------------------------------------------------------------------


def _load(*parts: bytes) -> int:
    insns = b"".join(parts)
    blob = ctypes.create_string_buffer(_btf())
    attr = struct.pack("<QQII", ctypes.addressof(blob), 0, len(blob.raw) - 1, 0)
    btf_fd, _ = bpf.sys_bpf(BPF_BTF_LOAD, attr, "BTF_LOAD")
    try:
        code = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(b"GPL")
        starts = [sum(len(p) for p in parts[:i]) // 8 for i in range(len(parts))]
        info = b"".join(
            struct.pack("<II", at, btf_id) for at, btf_id in zip(starts, (4, 8, 6, 7), strict=True)
        )
        func_info = ctypes.create_string_buffer(info, len(info))
        raw = bytearray(bpf.ATTR_SIZE)
        # no verifier log: it walks 13k instructions, whose log would not fit a buffer
        # (ENOSPC); a refusal still says its errno
        insn_count = len(insns) // 8
        addresses = (ctypes.addressof(code), ctypes.addressof(lic))
        struct.pack_into("<IIQQ", raw, 0, BPF_PROG_TYPE_RAW_TRACEPOINT, insn_count, *addresses)
        struct.pack_into("<16s", raw, 48, b"pg_text_hash")
        struct.pack_into("<IIQI", raw, 72, btf_fd, 8, ctypes.addressof(func_info), len(starts))
        try:
            fd, _ = bpf.sys_bpf(bpf.BPF_PROG_LOAD, raw, "PROG_LOAD")
        except bpf.BpfError as exc:
            raise KernelAccessError("in-kernel text hash", f"cannot load: {exc}") from exc
    finally:
        os.close(btf_fd)
    return fd


def range_table(spans: Sequence[tuple[int, int]]) -> bytes:
    """The run's range table: each (address, size) copied after the one before, its status
    -1 until the run writes it."""
    table, at = bytearray(), 0
    for address, size in spans:
        table += struct.pack("<QQQq", address, size, at, -1)
        at += size
    return bytes(table)


class TextHasher:
    """The program and its three maps: the copy (read-only here), the keys and range table
    (written here), the digests (read here), each mapped into this process."""

    def __init__(self, unroll: int = UNROLL) -> None:
        self._fds: list[int] = []
        self._maps: list[mmap.mmap] = []
        self._prog = -1
        self._words: memoryview | None = None
        self._table: memoryview | None = None
        self._key_count = 2
        self._lock = threading.Lock()
        self.run_seconds = 0.0  # in runs, all told (what of a sweep the kernel took)
        try:
            self._buf = self._map("pg_th_copy", 2 * CHUNK, mmap.PROT_READ)
            self._keys = self._map("pg_th_keys", PARAMS, mmap.PROT_READ | mmap.PROT_WRITE)
            self._out = self._map("pg_th_out", OUT_PAGES * DIGEST, mmap.PROT_READ)
            buf, keys, out = self._fds
            self._prog = _load(*program_parts(buf, keys, out, unroll))
        except BaseException:
            self.close()
            raise
        self._runner = bpf.PreparedTestRun(self._prog, 32)
        self._words = memoryview(self._out).cast("Q")  # the digests as (A, B) u64 pairs
        self._table = memoryview(self._keys).cast("q")[KEYS // 8 :]  # the range table
        # patchguard's own objects: the ebpf surface leaves them out by identity
        self.prog_id = prog_info(self._prog).prog_id
        self.map_ids = [map_info(fd).map_id for fd in self._fds]
        self.new_keys()

    def _map(self, name: str, size: int, prot: int) -> mmap.mmap:
        fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, size, 1, name, bpf.BPF_F_MMAPABLE)
        self._fds.append(fd)
        self._maps.append(mmap.mmap(fd, size, mmap.MAP_SHARED, prot))
        return self._maps[-1]

    def new_keys(self, key_b: bytes | None = None) -> tuple[bytes, bytes]:
        """Key A is the old key B (or fresh), key B fresh: a sweep that changes the key."""
        key_a = self._keys[PAGE:KEYS] if key_b is None else key_b
        keys = (bytes(key_a), os.urandom(PAGE))
        self.set_keys(*keys)
        return keys

    def keep_key(self) -> bytes:
        """Key A and key B both the old key B: a sweep under one key, one NH pass."""
        key = bytes(self._keys[PAGE:KEYS])
        self.set_keys(key, key)
        return key

    def keys(self) -> tuple[bytes, bytes]:
        """Key A and key B as the next run hashes under them."""
        return bytes(self._keys[:PAGE]), bytes(self._keys[PAGE:KEYS])

    def set_keys(self, key_a: bytes, key_b: bytes) -> None:
        self._keys[:KEYS] = key_a + key_b
        self._key_count = 1 if key_a == key_b else 2

    def hash_ranges(self, ranges: Sequence[tuple[int, int]], first: int = 0) -> list[int]:
        """Copy each (address, pages) one after another into the copy (at most RANGES, and
        CHUNK_PAGES pages in all), then hash every page of it into slots first..; each
        range's copy result: 0, or -errno (the copy's pages are zeros then)."""
        pages = sum(n for _, n in ranges)
        if len(ranges) > RANGES or pages > CHUNK_PAGES:
            raise ValueError(f"{len(ranges)} ranges of {pages} pages: more than one run holds")
        return self._run([(address, n * PAGE) for address, n in ranges], pages, first)

    def gather(self, spans: Sequence[tuple[int, int]]) -> list[bytes | None]:
        """The bytes of each (address, size), all copied in one run and none hashed (a
        module's struct module each: one run for all, not one each); None where the copy
        failed. At most RANGES spans, CHUNK bytes in all."""
        if len(spans) > RANGES or sum(size for _, size in spans) > CHUNK:
            raise ValueError(f"{len(spans)} spans: more than one run holds")
        statuses, at, found = self._run(spans, 0, 0), 0, []
        for (_, size), status in zip(spans, statuses, strict=True):
            found.append(None if status else bytes(self._buf[at : at + size]))
            at += size
        return found

    def _run(self, spans: Sequence[tuple[int, int]], pages: int, first: int) -> list[int]:
        """One run: each (address, size) copied after the one before, then `pages` pages of
        the copy hashed; each span's copy result."""
        self.run_table(range_table(spans), len(spans), pages, first)
        return self.statuses(len(spans))

    def run_table(self, table: bytes, ranges: int, pages: int, first: int = 0) -> bool:
        """One run of a range table made by range_table(): True if every range was copied
        (else statuses() says which were not). MemoryReadError if the run was refused."""
        assert self._table is not None
        self._keys[KEYS : KEYS + len(table)] = table
        struct.pack_into("<QQQQ", self._runner.ctx, 0, ranges, pages, first, self._key_count)
        started = time.perf_counter()
        ret = self._runner.run()
        self.run_seconds += time.perf_counter() - started
        if ret != pages:
            why = explain_errno(-ret) if ret < 0 else f"{ret} of {pages} pages hashed"
            address = struct.unpack_from("<Q", table)[0] if table else 0
            raise MemoryReadError(address, pages * PAGE, f"in-kernel hash: {why}")
        # each status is 0 or -errno: all copied when they are all zero (one compare in C)
        found = self._table[3 : 4 * ranges : 4].tobytes()
        return found == bytes(len(found))

    def run_digests(self, table: bytes, ranges: int, pages: int) -> tuple[bool, bytes, bytes]:
        """run_table() into slots 0.., then its A and B digests (8 bytes a page each): a
        sweep's one call a run."""
        copied = self.run_table(table, ranges, pages)
        assert self._words is not None
        return (
            copied,
            self._words[0 : 2 * pages : 2].tobytes(),
            self._words[1 : 2 * pages : 2].tobytes(),
        )

    def statuses(self, ranges: int) -> list[int]:
        """Each range's copy result in the last run: 0, or -errno."""
        assert self._table is not None
        return self._table[3 : 4 * ranges : 4].tolist()

    def hash_chunk(self, address: int, pages: int, first: int) -> None:
        """Digests of `pages` pages at `address` into slots first.."""
        (status,) = self.hash_ranges([(address, pages)], first)
        if status:
            why = f"bpf_probe_read_kernel: {explain_errno(-status)}"
            raise MemoryReadError(address, pages * PAGE, f"in-kernel hash: {why}")

    def copy(self, pages: int) -> memoryview:
        """The bytes the last run hashed (valid until the next one)."""
        return memoryview(self._buf)[: pages * PAGE]

    def records(self, count: int) -> bytes:
        """The last pass's digests, (A, B) per page as two little-endian u64."""
        return self._out[: count * DIGEST]

    def digests(self, count: int) -> list[tuple[int, int]]:
        return list(struct.iter_unpack("<QQ", self.records(count)))

    def hash_range(self, start: int, end: int) -> list[tuple[int, int]]:
        """(NH under key A, NH under key B) of each page of [start, end)."""
        pages = (end - start + PAGE - 1) // PAGE
        if pages > OUT_PAGES:
            raise ValueError(f"{pages} pages: more than {OUT_PAGES} in one pass")
        with self._lock:
            for first in range(0, pages, CHUNK_PAGES):
                n = min(CHUNK_PAGES, pages - first)
                self.hash_chunk(start + first * PAGE, n, first)
            return self.digests(pages)

    def close(self) -> None:
        for view in (self._words, self._table):
            if view is not None:
                view.release()  # an mmap with views exported cannot close
        self._words = self._table = None
        for m in self._maps:
            m.close()
        for fd in [*self._fds, self._prog]:
            if fd >= 0:
                os.close(fd)
        self._maps, self._fds, self._prog = [], [], -1
