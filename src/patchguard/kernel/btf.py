"""BTF (BPF Type Format): name kernel functions by BTF type id and back.

The kernel exports its types as raw BTF: /sys/kernel/btf/vmlinux for the core kernel, and one
split BTF per module (/sys/kernel/btf/<module>) whose type ids and string offsets continue
those of vmlinux. bpf(2) reports attach points (fentry/fexit, kfuncs, struct_ops) as BTF ids,
so this is what turns `attach_btf_id` into a function name.

Layout (include/uapi/linux/btf.h): a struct btf_header, then the type section, a sequence of
struct btf_type {name_off, info, size/type} each followed by kind-specific trailing data, then
the string section (NUL-terminated names addressed by name_off). Only what naming needs is
decoded; the rest of each type is skipped, exactly, by kind.
"""

from __future__ import annotations

import bisect
import contextlib
import struct
import sys
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar, cast

from patchguard.kernel.errors import KernelAccessError, oserror_reason

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
BTF_HEADER_FORMAT = "HBBIIIII"  # struct btf_header, without its byte order
BTF_HEADER_SIZE = struct.calcsize("<" + BTF_HEADER_FORMAT)  # 24
BTF_TYPE_WORDS = 3  # struct btf_type: name_off, info, size/type

# Kind number -> (name, trailing u32 words always, trailing u32 words per vlen item).
# From the uapi structs: btf_array is 3 words, btf_member 3, btf_enum 2, btf_param 2,
# btf_var 1, btf_var_secinfo 3, btf_decl_tag 1, btf_enum64 3; INT is followed by one u32.
BTF_KINDS: dict[int, tuple[str, int, int]] = {
    1: ("INT", 1, 0),
    2: ("PTR", 0, 0),
    3: ("ARRAY", 3, 0),
    4: ("STRUCT", 0, 3),
    5: ("UNION", 0, 3),
    6: ("ENUM", 0, 2),
    7: ("FWD", 0, 0),
    8: ("TYPEDEF", 0, 0),
    9: ("VOLATILE", 0, 0),
    10: ("CONST", 0, 0),
    11: ("RESTRICT", 0, 0),
    12: ("FUNC", 0, 0),
    13: ("FUNC_PROTO", 0, 2),
    14: ("VAR", 1, 0),
    15: ("DATASEC", 0, 3),
    16: ("FLOAT", 0, 0),
    17: ("DECL_TAG", 1, 0),
    18: ("TYPE_TAG", 0, 0),
    19: ("ENUM64", 0, 3),
}
BTF_KIND_FUNC = 12
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5


def btf_info_kind(info: int) -> int:
    return (info >> 24) & 0x1F


def btf_info_vlen(info: int) -> int:
    return info & 0xFFFF


T = TypeVar("T")


class BtfFormatError(KernelAccessError):
    """The bytes are not valid BTF; str() says where and what is wrong in one line."""

    def __init__(self, reason: str, where: str = "BTF") -> None:
        super().__init__(where, reason)


@dataclass(frozen=True)
class BtfHeader:
    """struct btf_header; section offsets are relative to the end of the header (hdr_len)."""

    magic: int
    version: int
    flags: int
    hdr_len: int
    type_off: int
    type_len: int
    str_off: int
    str_len: int
    byteorder: str  # "<" or ">": BTF is written in the byte order of the kernel that made it


def parse_header(data: bytes | memoryview) -> BtfHeader:
    if len(data) < 8:
        raise BtfFormatError(f"truncated header ({len(data)} bytes, need at least 8)")
    byteorder = _byteorder(bytes(data[:2]))
    hdr_len = struct.unpack_from(byteorder + "I", data, 4)[0]
    if hdr_len < BTF_HEADER_SIZE:
        raise BtfFormatError(f"header length {hdr_len} is shorter than struct btf_header (24)")
    if len(data) < hdr_len:
        raise BtfFormatError(f"truncated header ({len(data)} bytes, hdr_len says {hdr_len})")
    magic, version, flags, _, type_off, type_len, str_off, str_len = struct.unpack_from(
        byteorder + BTF_HEADER_FORMAT, data, 0
    )
    header = BtfHeader(
        magic, version, flags, hdr_len, type_off, type_len, str_off, str_len, byteorder
    )
    if header.version != BTF_VERSION:
        raise BtfFormatError(f"unsupported BTF version {header.version} (expected 1)")
    return header


def _byteorder(magic: bytes) -> str:
    if struct.unpack("<H", magic)[0] == BTF_MAGIC:
        return "<"
    if struct.unpack(">H", magic)[0] == BTF_MAGIC:
        return ">"
    raise BtfFormatError(f"bad magic {magic.hex()} (expected BTF magic 0xeb9f)")


def _section(data: memoryview, header: BtfHeader, name: str, off: int, length: int) -> memoryview:
    start = header.hdr_len + off
    if start + length > len(data):
        raise BtfFormatError(
            f"truncated {name} section (needs bytes {start}..{start + length}, have {len(data)})"
        )
    return data[start : start + length]


@dataclass(frozen=True, eq=False)
class Btf:
    """One parsed BTF object: vmlinux, or a module's split BTF on top of `base`.

    Type ids run from `start_id` to `start_id + len(self) - 1`; ids below `start_id` belong
    to `base` (for vmlinux, only id 0, void). Lookups of base ids are passed to the base.
    """

    header: BtfHeader
    start_id: int  # first type id defined here: 1 for vmlinux, base's next id for a module
    start_str_off: int  # name_off values below this address the base's string section
    words: array[int] = field(repr=False)  # the type section as u32 words, native order
    strings: bytes = field(repr=False)
    base: Btf | None = field(default=None, repr=False)
    where: str = "BTF"  # the file, for errors found as the walk goes on
    # The kernel's lookup by name and kind (kernel_lookup): vmlinux on the live kernel only.
    finder: Finder | None = field(default=None, repr=False)
    # Index in `words` of each type, by id - start_id, found by walking the type section as
    # far as a lookup needs: a whole walk is ~35 ms of Python for vmlinux, and a scan asks
    # about a few types near its start (task_struct is id 114 of 126k).
    _walk: _Walk = field(default_factory=lambda: _Walk(), repr=False)
    # What readers derive from this BTF once (a struct layout's offsets), by the function
    # that derives it: a scan asks for the same layout many times.
    _derived: dict[Callable[[Btf], object], object] = field(default_factory=dict, repr=False)

    def derived(self, make: Callable[[Btf], T]) -> T:
        """`make(self)`, computed once per Btf."""
        if make not in self._derived:
            self._derived[make] = make(self)
        return cast(T, self._derived[make])

    @classmethod
    def parse(
        cls, data: bytes, base: Btf | None = None, where: str = "BTF", finder: Finder | None = None
    ) -> Btf:
        """Parse raw BTF; `base` is vmlinux's Btf when `data` is a module's split BTF. The
        header and sections are checked here; each type when the walk reaches it."""
        view = memoryview(data)
        header = parse_header(view)
        types = _section(view, header, "type", header.type_off, header.type_len)
        strings = _section(view, header, "string", header.str_off, header.str_len)
        if header.type_len % 4 or header.type_off % 4:
            raise BtfFormatError(f"type section at {header.type_off} is not 4-byte aligned")
        if header.str_len and strings[-1] != 0:
            raise BtfFormatError("string section does not end with NUL (truncated?)")
        words = array("I")
        if words.itemsize != 4:  # pragma: no cover - every platform CPython runs on today
            raise BtfFormatError("array('I') is not 32-bit on this platform")
        words.frombytes(types)
        if header.byteorder != ("<" if sys.byteorder == "little" else ">"):
            words.byteswap()
        start_id = base.start_id + len(base) if base is not None else 1
        start_str_off = base.start_str_off + base.header.str_len if base is not None else 0
        return cls(header, start_id, start_str_off, words, bytes(strings), base, where, finder)

    @classmethod
    def load(cls, path: Path | str, base: Btf | None = None, finder: Finder | None = None) -> Btf:
        """Read and parse a BTF file; any failure is a KernelAccessError naming the path."""
        where = str(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KernelAccessError(where, oserror_reason(exc)) from exc
        try:
            return cls.parse(data, base, where, finder)
        except BtfFormatError as exc:
            raise BtfFormatError(f"corrupt BTF: {exc.reason}", where) from exc

    def __len__(self) -> int:
        """Number of types defined in this object (not counting void or the base's types)."""
        return len(self._walked(1 << 32))

    @property
    def end_id(self) -> int:
        """One past the last type id defined here."""
        return self.start_id + len(self)

    def _walked(self, count: int) -> array[int]:
        """The offsets of the first `count` types (fewer if there are fewer)."""
        walk = self._walk
        with walk.lock:  # surfaces share vmlinux's Btf across threads
            if len(walk.offsets) < count and walk.next < len(self.words):
                try:
                    walk.next = _walk(self.words, walk.offsets, walk.next, self.start_id, count)
                except BtfFormatError as exc:
                    raise BtfFormatError(f"corrupt BTF: {exc.reason}", self.where) from exc
            return walk.offsets

    def _offset(self, type_id: int) -> int | None:
        """Index in `words` of type `type_id` defined here; None if there is no such type."""
        n = type_id - self.start_id
        offsets = self._walked(n + 1)
        return offsets[n] if 0 <= n < len(offsets) else None

    def _owner(self, type_id: int) -> Btf:
        btf = self
        while type_id < btf.start_id and btf.base is not None:
            btf = btf.base
        if type_id != 0 and btf._offset(type_id) is None:
            raise KeyError(f"no BTF type id {type_id} (ids run 1..{self.end_id - 1})")
        return btf

    def _at(self, type_id: int) -> int:
        """Index in `words` of a type known to be defined here (_owner said so)."""
        at = self._offset(type_id)
        assert at is not None
        return at

    def _info(self, type_id: int) -> tuple[int, int]:
        """(name_off, info) of a type defined in this object."""
        at = self._at(type_id)
        return self.words[at], self.words[at + 1]

    def kind(self, type_id: int) -> str:
        """The BTF kind name ("FUNC", "STRUCT", ...); id 0 (void) is "UNKN" as in the kernel."""
        btf = self._owner(type_id)
        if type_id == 0:
            return "UNKN"
        return BTF_KINDS[btf_info_kind(btf._info(type_id)[1])][0]

    def name(self, type_id: int) -> str:
        """The type's name; "" for anonymous types and void."""
        btf = self._owner(type_id)
        if type_id == 0:
            return ""
        return self.string(btf._info(type_id)[0])

    def func_name(self, type_id: int) -> str | None:
        """The function's name if `type_id` is a FUNC, else None (also for unknown ids)."""
        try:
            btf = self._owner(type_id)
        except KeyError:
            return None
        if type_id == 0:
            return None
        name_off, info = btf._info(type_id)
        return self.string(name_off) if btf_info_kind(info) == BTF_KIND_FUNC else None

    def func_id(self, name: str) -> int | None:
        """The type id of the FUNC named `name`, here first and then in the base; else None."""
        found = self._named(name, BTF_KIND_FUNC)
        if found is None and self.base is not None:
            return self.base.func_id(name)
        return found

    def string(self, name_off: int) -> str:
        """The NUL-terminated string at `name_off`, following split BTF into the base."""
        if name_off < self.start_str_off and self.base is not None:
            return self.base.string(name_off)
        off = name_off - self.start_str_off
        if not 0 <= off < len(self.strings):
            raise BtfFormatError(f"name_off {name_off} is outside the string section")
        end = self.strings.find(b"\0", off)
        return self.strings[off:end].decode("utf-8", errors="replace")

    def struct_id(self, name: str) -> int | None:
        """The type id of the STRUCT named `name` (not a FWD), here first, then in the base."""
        found = self._named(name, BTF_KIND_STRUCT)
        if found is None and self.base is not None:
            return self.base.struct_id(name)
        return found

    def struct_size(self, struct_name: str) -> int | None:
        """sizeof(struct `struct_name`), None if there is no such struct."""
        type_id = self.struct_id(struct_name)
        if type_id is None:
            return None
        btf = self._owner(type_id)
        return int(btf.words[btf._at(type_id) + 2])

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of `member` in STRUCT `struct_name`, looking into anonymous struct and
        union members (randomized_struct_fields_start wraps most of task_struct in one);
        None if there is no such struct or member, or the member is a bitfield."""
        type_id = self.struct_id(struct_name)
        return None if type_id is None else self._member_bits(type_id, member, 0)

    def required_offset(self, struct_name: str, member: str) -> int:
        """member_offset for a layout that cannot do without the member: KernelAccessError
        naming the struct and member when this kernel's BTF has no such member."""
        found = self.member_offset(struct_name, member)
        if found is None:
            raise KernelAccessError("vmlinux BTF", f"no struct {struct_name}.{member}")
        return found

    def _member_bits(self, type_id: int, member: str, depth: int) -> int | None:
        btf = self._owner(type_id)
        at = btf._at(type_id)
        info = btf.words[at + 1]
        if btf_info_kind(info) not in (BTF_KIND_STRUCT, BTF_KIND_UNION) or depth > 8:
            return None
        kind_flag = info >> 31  # set: each offset word is bitfield_size << 24 | bit offset
        for n in range(btf_info_vlen(info)):
            name_off, member_type, word = btf.words[at + 3 + 3 * n : at + 6 + 3 * n]
            bits = word & 0xFFFFFF if kind_flag else word
            name = self.string(name_off)
            if name == member:
                bitfield = kind_flag and word >> 24
                return None if bitfield or bits % 8 else bits // 8
            if not name:  # anonymous struct or union: its members are the outer struct's
                inner = self._member_bits(self._resolved(member_type), member, depth + 1)
                if inner is not None:
                    return bits // 8 + inner
        return None

    def _resolved(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type they name."""
        for _ in range(16):
            if self.kind(type_id) not in ("TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "TYPE_TAG"):
                break
            btf = self._owner(type_id)
            type_id = btf.words[btf._at(type_id) + 2]
        return type_id

    def _named(self, name: str, kind: int) -> int | None:
        """The lowest id of a type of `kind` named `name` defined here: the kernel's answer
        where it gives one (finder), else found through the string section and the raw type
        words with bytes.find, not by decoding every name (an index of all FUNC names costs
        ~90 ms for vmlinux), walking the types only as far as the last match."""
        key = (name, kind)
        if key not in self._lookups:
            self._lookups[key] = self._find(name, kind)
        return self._lookups[key]

    def _find(self, name: str, kind: int) -> int | None:
        if self.finder is not None:
            with contextlib.suppress(KernelAccessError):  # the kernel cannot answer
                return self.finder(name, kind)
        return self._search(name.encode(), kind)

    def _search(self, name: bytes, kind: int) -> int | None:
        words_raw = self._words_raw
        found: list[int] = []
        for name_off in self._name_offsets(name):
            needle = name_off.to_bytes(4, sys.byteorder)
            hit = words_raw.find(needle)
            while hit >= 0:
                offsets = self._walked_past(hit // 4)
                n = bisect.bisect_left(offsets, hit // 4)
                at_type = hit % 4 == 0 and n < len(offsets) and offsets[n] == hit // 4
                if at_type and (self.words[hit // 4 + 1] >> 24) & 0x1F == kind:
                    found.append(self.start_id + n)
                hit = words_raw.find(needle, hit + 1)
        return min(found) if found else None

    def _name_offsets(self, name: bytes) -> list[int]:
        """Every name_off that reads `name`: in this string section and (split BTF names
        point there too) in the base's."""
        found: list[int] = []
        btf: Btf | None = self
        while btf is not None:
            # A split BTF's section may start with a name, not a NUL: search it NUL-prefixed.
            hay = b"\0" + btf.strings
            at = hay.find(b"\0" + name + b"\0")
            while at >= 0:  # BTF normally stores a name once; duplicates are allowed
                found.append(btf.start_str_off + at)
                at = hay.find(b"\0" + name + b"\0", at + 1)
            btf = btf.base
        return found

    def _walked_past(self, word: int) -> array[int]:
        """The offsets, walked at least to the type that starts at or after `word`."""
        offsets = self._walked(1)
        while offsets and offsets[-1] < word and self._walk.next < len(self.words):
            offsets = self._walked(len(offsets) + WALK_STEP)
        return offsets

    @cached_property
    def _words_raw(self) -> bytes:
        return self.words.tobytes()

    @cached_property
    def _lookups(self) -> dict[tuple[str, int], int | None]:
        return {}


Finder = Callable[[str, int], "int | None"]


class _Walk:
    """The part of a Btf that grows as lookups need it: the type offsets found so far and
    where the walk stopped."""

    def __init__(self) -> None:
        self.offsets = array("I")
        self.next = 0
        self.lock = threading.Lock()


WALK_STEP = 4096  # types walked at a time when a search needs the walk to go further


def _walk(words: array[int], offsets: array[int], at: int, start_id: int, count: int) -> int:
    """Append to `offsets` the word index of each struct btf_type from word `at` on, skipping
    each kind's trailing data exactly, until `count` types are known or the section ends;
    return the word where the walk stopped."""
    # Flattened for speed: vmlinux has ~126k types and this loop is most of the parse time.
    trailing = [(0, 0)] * 32
    for kind, (_, fixed, per_vlen) in BTF_KINDS.items():
        trailing[kind] = (fixed, per_vlen)
    known = [kind in BTF_KINDS for kind in range(32)]
    append = offsets.append
    total = len(words)
    while at < total and len(offsets) < count:
        if at + BTF_TYPE_WORDS > total:
            raise BtfFormatError(f"truncated type section: type id {start_id + len(offsets)}")
        info = words[at + 1]
        kind = (info >> 24) & 0x1F
        if not known[kind]:
            type_id = start_id + len(offsets)
            raise BtfFormatError(f"unknown BTF kind {kind} at type id {type_id}")
        fixed, per_vlen = trailing[kind]
        append(at)
        at += BTF_TYPE_WORDS + fixed + per_vlen * (info & 0xFFFF)
    if at > total:
        type_id = start_id + len(offsets) - 1
        raise BtfFormatError(f"truncated type section: type id {type_id} runs past its end")
    return at


__all__ = ["BTF_KINDS", "Btf", "BtfFormatError", "BtfHeader", "parse_header"]
