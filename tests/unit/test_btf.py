"""BTF parsing: on hand-built BTF blobs (struct.pack, laid out per include/uapi/linux/btf.h)
and on the vmlinux BTF captured from the 6.18 "fc" kernel."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import pytest

from patchguard.kernel.btf import Btf, BtfFormatError
from patchguard.kernel.errors import KernelAccessError

FIXTURE = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"

KIND = {
    "INT": 1,
    "PTR": 2,
    "ARRAY": 3,
    "STRUCT": 4,
    "UNION": 5,
    "ENUM": 6,
    "FWD": 7,
    "TYPEDEF": 8,
    "VOLATILE": 9,
    "CONST": 10,
    "RESTRICT": 11,
    "FUNC": 12,
    "FUNC_PROTO": 13,
    "VAR": 14,
    "DATASEC": 15,
    "FLOAT": 16,
    "DECL_TAG": 17,
    "TYPE_TAG": 18,
    "ENUM64": 19,
}


class HandBuiltBtf:
    """Builds a raw BTF blob by hand: a struct btf_header, btf_types with their trailing
    u32 words, and a string section. `str_base` is where this blob's strings start in the
    name_off space (the base's str_len for split BTF)."""

    def __init__(self, byteorder: str = "<", str_base: int = 0, first_string: bool = True):
        self.byteorder = byteorder
        self.str_base = str_base
        self.strings = bytearray(b"\0" if first_string else b"")
        self.types = bytearray()

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = self.str_base + len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(
        self,
        kind: str,
        name: str | int = "",
        size_or_type: int = 0,
        vlen: int = 0,
        trailing: list[int] | None = None,
    ) -> HandBuiltBtf:
        name_off = name if isinstance(name, int) else self.name(name)
        info = (KIND[kind] << 24) | vlen
        words = [name_off, info, size_or_type, *(trailing or [])]
        self.types += struct.pack(f"{self.byteorder}{len(words)}I", *words)
        return self

    def raw(self, name_off: int, info: int, size_or_type: int, trailing: list[int]) -> None:
        words = [name_off, info, size_or_type, *trailing]
        self.types += struct.pack(f"{self.byteorder}{len(words)}I", *words)

    def blob(self, magic: int = 0xEB9F, version: int = 1) -> bytes:
        header = struct.pack(
            f"{self.byteorder}HBBIIIII",
            magic,
            version,
            0,
            24,
            0,
            len(self.types),
            len(self.types),
            len(self.strings),
        )
        return header + bytes(self.types) + bytes(self.strings)


def hand_built_all_kinds(byteorder: str = "<") -> HandBuiltBtf:
    """One type of every kind, each with the trailing data the uapi header gives it."""
    b = HandBuiltBtf(byteorder)
    b.add("INT", "int", 4, trailing=[0x01000020])  # 1: signed, 32 bits
    b.add("PTR", "", 1)  # 2
    b.add("ARRAY", "", 0, trailing=[1, 1, 16])  # 3: int[16]
    b.add("STRUCT", "task", 16, vlen=2, trailing=[b.name("pid"), 1, 0, b.name("next"), 2, 64])
    b.add("UNION", "u", 8, vlen=1, trailing=[b.name("p"), 2, 0])  # 5
    b.add("ENUM", "color", 4, vlen=3, trailing=[b.name("RED"), 0, b.name("GREEN"), 1, 0, 2])
    b.add("FWD", "later")  # 7
    b.add("TYPEDEF", "pid_t", 1)  # 8
    b.add("VOLATILE", "", 1)  # 9
    b.add("CONST", "", 1)  # 10
    b.add("RESTRICT", "", 2)  # 11
    b.add("FUNC_PROTO", "", 1, vlen=2, trailing=[b.name("a"), 1, b.name("b"), 2])  # 12
    b.add("FUNC", "do_thing", 12)  # 13
    b.add("VAR", "counter", 1, trailing=[1])  # 14: global
    b.add("DATASEC", ".data", 4, vlen=1, trailing=[14, 0, 4])  # 15
    b.add("FLOAT", "double", 8)  # 16
    b.add("DECL_TAG", "tag", 13, trailing=[0xFFFFFFFF])  # 17: on the function itself
    b.add("TYPE_TAG", "user", 1)  # 18
    b.add("ENUM64", "big", 8, vlen=2, trailing=[b.name("LO"), 1, 0, b.name("HI"), 0, 1])
    b.add("FUNC", "last_func", 12)  # 20
    return b


ALL_KINDS_ORDER = [  # the kinds of ids 1..20 above
    *("INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE"),
    *("CONST", "RESTRICT", "FUNC_PROTO", "FUNC", "VAR", "DATASEC", "FLOAT", "DECL_TAG"),
    *("TYPE_TAG", "ENUM64", "FUNC"),
]


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_hand_built_every_kind_is_skipped_exactly(byteorder: str) -> None:
    btf = Btf.parse(hand_built_all_kinds(byteorder).blob())
    assert len(btf) == 20
    assert [btf.kind(i) for i in range(1, 21)] == ALL_KINDS_ORDER
    assert btf.func_name(20) == "last_func"
    assert btf.func_id("last_func") == 20
    assert btf.header.byteorder == byteorder


@pytest.mark.parametrize(
    ("kind", "vlen", "trailing"),
    [
        ("INT", 0, [0x20]),
        ("ARRAY", 0, [1, 1, 4]),
        ("STRUCT", 2, [0, 1, 0] * 2),
        ("UNION", 3, [0, 1, 0] * 3),
        ("ENUM", 2, [0, 7] * 2),
        ("FUNC_PROTO", 3, [0, 1] * 3),
        ("VAR", 0, [0]),
        ("DATASEC", 2, [1, 0, 4] * 2),
        ("DECL_TAG", 0, [0]),
        ("ENUM64", 2, [0, 1, 2] * 2),
        ("PTR", 0, []),
        ("FWD", 0, []),
        ("TYPE_TAG", 0, []),
    ],
)
def test_hand_built_trailing_data_of_each_kind(kind: str, vlen: int, trailing: list[int]) -> None:
    # Words in the trailing data look like btf_types if misread; a wrong skip shifts "after".
    b = HandBuiltBtf()
    b.add(kind, "first", 1, vlen=vlen, trailing=trailing)
    b.add("FUNC", "after", 1)
    btf = Btf.parse(b.blob())
    assert (len(btf), btf.kind(1), btf.name(1)) == (2, kind, "first")
    assert btf.func_id("after") == 2


def test_hand_built_names_and_lookups() -> None:
    btf = Btf.parse(hand_built_all_kinds().blob())
    assert btf.name(1) == "int"
    assert btf.name(2) == ""  # anonymous PTR
    assert btf.name(4) == "task"
    assert btf.kind(0) == "UNKN" and btf.name(0) == ""  # void
    assert btf.func_id("do_thing") == 13
    assert btf.func_name(13) == "do_thing"
    assert btf.func_name(4) is None  # a STRUCT is not a function
    assert btf.func_name(0) is None
    assert btf.func_name(999) is None
    assert btf.func_id("task") is None  # names of non-FUNC types are not functions
    assert btf.func_id("no_such_function") is None
    with pytest.raises(KeyError):
        btf.kind(21)
    with pytest.raises(KeyError):
        btf.name(-1)


def test_hand_built_repeated_func_name_gives_lowest_id() -> None:
    b = HandBuiltBtf()
    b.add("FUNC_PROTO", "", 0)
    b.add("FUNC", "dup", 1).add("FUNC", "dup", 1)
    assert Btf.parse(b.blob()).func_id("dup") == 2


def test_hand_built_split_btf_continues_ids_and_strings() -> None:
    base_builder = hand_built_all_kinds()
    base = Btf.parse(base_builder.blob())
    # Module strings continue the base's string section; its first type id is base's last + 1.
    mod = HandBuiltBtf(str_base=len(base_builder.strings), first_string=False)
    mod.add("FUNC", "mod_func", 12)  # 21: its FUNC_PROTO lives in the base
    mod.add("STRUCT", "mod_state", 4, vlen=1, trailing=[mod.name("x"), 1, 0])  # 22
    mod.add("TYPEDEF", 1, 22)  # 23: reuses the base's string "int" by its base name_off
    split = Btf.parse(mod.blob(), base=base)

    assert (split.start_id, len(split), split.end_id) == (21, 3, 24)
    assert split.kind(21) == "FUNC" and split.func_name(21) == "mod_func"
    assert split.kind(22) == "STRUCT" and split.name(22) == "mod_state"
    assert split.name(23) == "int"
    assert split.kind(1) == "INT" and split.name(4) == "task"  # base ids through the split
    assert split.func_id("mod_func") == 21
    assert split.func_id("do_thing") == 13  # found in the base
    assert split.func_name(13) == "do_thing"
    assert base.func_id("mod_func") is None  # the base does not see module types
    with pytest.raises(KeyError):
        split.kind(24)


def test_hand_built_split_on_split_continues_again() -> None:
    base = Btf.parse(hand_built_all_kinds().blob())
    first = HandBuiltBtf(str_base=base.header.str_len, first_string=False)
    first.add("FUNC", "one", 12)
    mid = Btf.parse(first.blob(), base=base)
    second = HandBuiltBtf(str_base=base.header.str_len + mid.header.str_len, first_string=False)
    second.add("FUNC", "two", 12)
    top = Btf.parse(second.blob(), base=mid)
    assert (top.start_id, top.func_id("two"), top.func_id("one"), top.name(1)) == (
        22,
        22,
        21,
        "int",
    )


def test_hand_built_corrupt_bad_magic() -> None:
    blob = hand_built_all_kinds().blob(magic=0x1234)
    with pytest.raises(BtfFormatError, match="bad magic"):
        Btf.parse(blob)


def test_hand_built_corrupt_version() -> None:
    with pytest.raises(BtfFormatError, match="unsupported BTF version 2"):
        Btf.parse(hand_built_all_kinds().blob(version=2))


@pytest.mark.parametrize("keep", [0, 3, 7, 20])
def test_hand_built_corrupt_truncated_header(keep: int) -> None:
    with pytest.raises(BtfFormatError, match="header"):
        Btf.parse(hand_built_all_kinds().blob()[:keep])


def test_hand_built_corrupt_truncated_string_section() -> None:
    blob = hand_built_all_kinds().blob()
    with pytest.raises(BtfFormatError, match="truncated string section"):
        Btf.parse(blob[:-3])


def test_hand_built_corrupt_truncated_type_section() -> None:
    blob = bytearray(hand_built_all_kinds().blob())
    type_len = struct.unpack_from("<I", blob, 12)[0]
    struct.pack_into("<I", blob, 12, type_len + 400)  # type_len now overruns the file
    with pytest.raises(BtfFormatError, match="truncated type section"):
        Btf.parse(bytes(blob))


def test_hand_built_corrupt_last_type_runs_past_section() -> None:
    b = HandBuiltBtf()
    b.add("FUNC", "ok", 0)
    b.raw(0, (KIND["STRUCT"] << 24) | 2, 8, [0, 1, 0])  # says 2 members, carries 1
    btf = Btf.parse(b.blob())  # types are checked as the walk reaches them
    assert btf.name(1) == "ok"
    with pytest.raises(BtfFormatError, match="type id 2 runs past its end"):
        len(btf)


def test_hand_built_corrupt_unknown_kind() -> None:
    b = HandBuiltBtf()
    b.add("INT", "int", 4, trailing=[32])
    b.raw(0, 25 << 24, 0, [])
    with pytest.raises(BtfFormatError, match="unknown BTF kind 25 at type id 2"):
        Btf.parse(b.blob()).kind(2)


def test_corrupt_type_found_by_a_later_lookup_names_the_file(tmp_path: Path) -> None:
    b = HandBuiltBtf()
    b.add("INT", "int", 4, trailing=[32])
    b.raw(0, 25 << 24, 0, [])
    path = tmp_path / "vmlinux"
    path.write_bytes(b.blob())
    btf = Btf.load(path)
    assert btf.name(1) == "int"
    with pytest.raises(KernelAccessError, match=rf"{path}: corrupt BTF: unknown BTF kind 25") as e:
        btf.name(2)
    assert "\n" not in str(e.value)


def test_hand_built_corrupt_strings_without_nul() -> None:
    b = HandBuiltBtf()
    b.add("FUNC", "f", 0)
    b.strings = b.strings[:-1]
    with pytest.raises(BtfFormatError, match="does not end with NUL"):
        Btf.parse(b.blob())


def test_load_names_path_and_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(KernelAccessError, match=r"nope: not present on this kernel \(ENOENT\)"):
        Btf.load(missing)
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(KernelAccessError, match=r"corrupt: corrupt BTF: bad magic 0000") as info:
        Btf.load(corrupt)
    assert "\n" not in str(info.value)
    with pytest.raises(KernelAccessError, match="directory"):
        Btf.load(tmp_path)
    good = tmp_path / "good"
    good.write_bytes(hand_built_all_kinds().blob())
    assert Btf.load(good).func_id("do_thing") == 13


@pytest.fixture(scope="module")
def captured_vmlinux() -> Btf:
    return Btf.parse(gzip.decompress(FIXTURE.read_bytes()))


def test_captured_vmlinux_counts(captured_vmlinux: Btf) -> None:
    btf = captured_vmlinux
    assert len(btf) == 126610
    kinds = Counter(btf.kind(i) for i in range(1, len(btf) + 1))
    assert kinds["FUNC"] == 56277 and kinds["STRUCT"] == 10682 and kinds["ENUM64"] == 9
    assert btf.kind(1) == "INT" and btf.name(1) == "long unsigned int"


def test_captured_vmlinux_functions(captured_vmlinux: Btf) -> None:
    btf = captured_vmlinux
    kill = btf.func_id("__x64_sys_kill")
    assert kill == 56943
    assert btf.kind(kill) == "FUNC" and btf.func_name(kill) == "__x64_sys_kill"
    assert btf.func_id("do_sys_openat2") == 76201
    assert btf.func_id("not_a_kernel_function") is None


def test_captured_vmlinux_every_func_points_at_a_proto(captured_vmlinux: Btf) -> None:
    # A FUNC's `type` is its FUNC_PROTO's id: any id drift in the parse would break this.
    btf = captured_vmlinux
    for type_id in range(1, len(btf) + 1):
        if btf.kind(type_id) == "FUNC":
            proto = btf.words[btf._at(type_id) + 2]
            assert btf.kind(proto) == "FUNC_PROTO", type_id
