"""Tracepoints read from kernel memory: the `struct tracepoint` a static key or a static call
key belongs to, its name and the probes registered on it.

A tracepoint's jump labels all use `&tp->key`, so the struct is at key - offsetof(struct
tracepoint, key), and its name is `tp->name`. Nothing here needs a data symbol
(CONFIG_KALLSYMS_ALL): a candidate is a tracepoint only if its `static_call_tramp` is the
text symbol `__SCT__tp_func_<its name>` (or, before static calls, its `iterator` is
`__traceiter_<its name>`), so an ordinary static key is never taken for one. Offsets come
from vmlinux BTF.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.memory import KERNEL_SPACE, KernelMemory

MAX_PROBES = 64  # tp->funcs is NULL-terminated; a longer array is not one
PROBES_AT_ONCE = 4  # entries read in the first read of tp->funcs (most hold one or two)
NAME_READS = (128, 64, 32)  # a name near the end of a mapping cannot be read 128 bytes long
_NAME = re.compile(rb"[A-Za-z0-9_]{1,127}")
TRAMPOLINE_PREFIX = "__SCT__tp_func_"
ITERATOR_PREFIX = "__traceiter_"


@dataclass(frozen=True)
class Layout:
    key: int
    name: int
    static_call_key: int | None  # None before static calls (5.10)
    check: int  # static_call_tramp, else iterator: the member that proves the name
    check_prefix: str
    funcs: int
    size: int  # bytes of the struct read at once
    func_size: int  # sizeof(struct tracepoint_func); its `func` is the first member
    data: int = 8  # tracepoint_func.data
    prio: int = 16  # tracepoint_func.prio
    iterator: int | None = None  # tracepoint.iterator: its __traceiter_ function (5.10+)


def layout(btf: Btf) -> Layout | None:
    """The offsets this module needs, or None where BTF lacks struct tracepoint."""
    off = {m: btf.member_offset("tracepoint", m) for m in ("name", "key", "funcs")}
    tramp, iterator = (
        btf.member_offset("tracepoint", m) for m in ("static_call_tramp", "iterator")
    )
    check, prefix = (tramp, TRAMPOLINE_PREFIX) if tramp is not None else (iterator, ITERATOR_PREFIX)
    func_size = btf.struct_size("tracepoint_func")
    name, key, funcs = off["name"], off["key"], off["funcs"]
    if name is None or key is None or funcs is None or check is None or not func_size:
        return None
    sck = btf.member_offset("tracepoint", "static_call_key")
    size = max(name, key, funcs, check, sck or 0, iterator or 0) + 8
    data, prio = (btf.member_offset("tracepoint_func", m) for m in ("data", "prio"))
    if data is None or prio is None:
        return None
    return Layout(key, name, sck, check, prefix, funcs, size, func_size, data, prio, iterator)


@dataclass(frozen=True)
class Probe:
    """One `struct tracepoint_func`: the function called, the data passed as its first
    argument (a BPF link or program, a trace event file, a perf event call) and its priority."""

    func: int
    data: int
    prio: int


@dataclass(frozen=True)
class Tracepoint:
    address: int  # of its struct tracepoint
    name: str
    static_call_key: int | None
    entries: tuple[Probe, ...]  # tp->funcs, in calling order

    @property
    def probes(self) -> tuple[int, ...]:
        """The functions registered on it (tp->funcs[i].func)."""
        return tuple(p.func for p in self.entries)


def _u64(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 8], "little")


class TracepointReader:
    """Finds the tracepoint behind a static key or a static call key, each read once.

    `text_symbols`: address -> name of the kernel's text symbols that prove a tracepoint (the
    `__SCT__tp_func_*` trampolines, or the `__traceiter_*` iterators)."""

    def __init__(self, memory: KernelMemory, lay: Layout, text_symbols: Mapping[int, str]) -> None:
        self.memory, self.layout, self.text_symbols = memory, lay, dict(text_symbols)
        self._at: dict[int, Tracepoint | None] = {}
        self._by_call_key: dict[int, Tracepoint] = {}
        self._scanned: set[int] = set()

    def at_key(self, key: int) -> Tracepoint | None:
        """The tracepoint whose `key` member is at `key`, None for any other static key."""
        address = key - self.layout.key
        if address not in self._at:
            self._at[address] = self._read(address)
            found = self._at[address]
            if found is not None and found.static_call_key is not None:
                self._by_call_key[found.static_call_key] = found
        return self._at[address]

    def by_call_key(self, call_key: int, jump_keys: Iterable[int]) -> Tracepoint | None:
        """The tracepoint whose `static_call_key` is `call_key`, found among the tracepoints
        of `jump_keys` (the keys of the jump tables: every tracepoint used anywhere has one)."""
        for key in jump_keys:
            if call_key in self._by_call_key:
                break
            if key not in self._scanned:
                self._scanned.add(key)
                self.at_key(key)
        return self._by_call_key.get(call_key)

    def named_at(self, address: int) -> Tracepoint | None:
        """The struct tracepoint at `address`, taken on its own name field: for addresses a
        module's own tracepoint list gives, which need no trampoline to prove them."""
        try:
            raw = self.memory.read(address, self.layout.size)
            name = self._name(_u64(raw, self.layout.name))
            probes = self._probes(_u64(raw, self.layout.funcs)) if name else ()
        except KernelAccessError:
            return None
        lay = self.layout
        sck = _u64(raw, lay.static_call_key) if lay.static_call_key is not None else None
        return Tracepoint(address, name, sck, probes) if name else None

    def _read(self, address: int) -> Tracepoint | None:
        lay = self.layout
        try:
            raw = self.memory.read(address, lay.size)
            proof = self.text_symbols.get(_u64(raw, lay.check))
            if proof is None:  # cheap: most static keys are not tracepoints
                return None
            name = self._name(_u64(raw, lay.name))
            if name is None or proof != lay.check_prefix + name:
                return None
            probes = self._probes(_u64(raw, lay.funcs))
        except KernelAccessError:
            return None
        sck = _u64(raw, lay.static_call_key) if lay.static_call_key is not None else None
        return Tracepoint(address, name, sck, probes)

    def _name(self, pointer: int) -> str | None:
        if pointer < KERNEL_SPACE:
            return None
        for size in NAME_READS:
            try:
                raw = self.memory.read(pointer, size)
            except KernelAccessError:
                continue
            text = raw.split(b"\0", 1)[0]
            return text.decode() if len(text) < len(raw) and _NAME.fullmatch(text) else None
        return None

    def _probes(self, funcs: int) -> tuple[Probe, ...]:
        return read_probes(self.memory, self.layout, funcs)


def _entry(lay: Layout, raw: bytes, at: int) -> Probe:
    prio = int.from_bytes(raw[at + lay.prio : at + lay.prio + 4], "little", signed=True)
    return Probe(_u64(raw, at), _u64(raw, at + lay.data), prio)


def read_probes(memory: KernelMemory, lay: Layout, funcs: int) -> tuple[Probe, ...]:
    """tp->funcs: an array of struct tracepoint_func (func, data, prio) ended by a NULL func,
    or no array. Read a few entries at once (kmalloc memory, mapped past the array's end);
    one at a time where that read fails (the array may end at its mapping's end)."""
    if funcs < KERNEL_SPACE:
        return ()
    func_size = lay.func_size
    try:
        raw = memory.read(funcs, func_size * PROBES_AT_ONCE)
    except KernelAccessError:
        raw = b""
    found: list[Probe] = []
    for i in range(MAX_PROBES):
        at = i * func_size
        if at + func_size > len(raw):
            raw = raw[:at] + memory.read(funcs + at, func_size)
        if not _u64(raw, at):
            return tuple(found)
        found.append(_entry(lay, raw, at))
    raise KernelAccessError(f"tracepoint funcs {funcs:#x}", f"over {MAX_PROBES} probes")


def tracepoint_of_event(event: str) -> str:
    """The tracepoint a trace event runs on: the syscalls category's sys_enter_NAME and
    sys_exit_NAME events are all served by the sys_enter and sys_exit tracepoints; every other
    event has a tracepoint of its own name."""
    bare = event.split(":", 1)[-1]
    for tracepoint in ("sys_enter", "sys_exit"):
        if bare.startswith(tracepoint + "_"):
            return tracepoint
    return bare
