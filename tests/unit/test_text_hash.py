"""The NH reference and the in-kernel hash program's layout (kernel/bpf/text_hash.py); the live
tests run the program against this reference."""

from __future__ import annotations

import struct

import pytest

from patchguard.kernel.bpf.insn import decode
from patchguard.kernel.bpf.text_hash import (
    BPF_PSEUDO_FUNC,
    CHUNK,
    KEYS,
    MAIN_SLOTS,
    PAGE,
    BPF_FUNC_loop,
    BPF_FUNC_probe_read_kernel,
    _chunk_pages,
    nh,
    program,
    program_parts,
)

ZERO = bytes(PAGE)


def words(*pairs: tuple[int, int]) -> bytes:
    """A page whose first u64 words are (high << 32 | low) of each pair, zeros after."""
    raw = b"".join(struct.pack("<Q", high << 32 | low) for high, low in pairs)
    return raw + bytes(PAGE - len(raw))


def test_nh_multiplies_the_sums_of_each_word_pair_mod_2_32() -> None:
    assert nh(ZERO, ZERO) == 0
    assert nh(words((3, 5)), ZERO) == 15
    assert nh(words((3, 5)), words((1, 2))) == 4 * 7  # (5 + 2) * (3 + 1)
    # the 32-bit sums wrap: (0xFFFFFFFF + 2) mod 2^32 = 1
    assert nh(words((0xFFFFFFFF, 7)), words((2, 0))) == 1 * 7


def test_nh_sums_wrap_mod_2_64() -> None:
    top = (0xFFFFFFFF, 0xFFFFFFFF)
    assert nh(words(top, top), ZERO) == (2 * 0xFFFFFFFF**2) % 2**64


def test_one_changed_bit_changes_the_digest_under_a_key() -> None:
    key = bytes(range(256)) * 16
    page = bytearray(bytes(range(256)) * 16)
    before = nh(bytes(page), key)
    page[1000] ^= 1
    assert nh(bytes(page), key) != before


def test_the_program_jumps_where_its_comments_say() -> None:
    main, copy, one, two = program_parts(3, 4, 5)
    slots = decode(main + copy + one + two)
    for at in (2, 11):  # too many ranges, too many pages -> the refusal
        assert slots[at][0] & 0xF0 == 0x20 and at + 1 + slots[at][3] == 23
    assert slots[23] == (0xB7, 0, 0, 0, -22)
    for at, target in ((3, MAIN_SLOTS), (12, MAIN_SLOTS + len(copy) // 8)):
        code, _, src, _, imm = slots[at]  # the copy callback, the one-key callback
        assert (code, src) == (0x18, BPF_PSEUDO_FUNC) and at + 1 + imm == target
    assert slots[15][0] & 0xF0 == 0x50 and slots[15][4] == 2 and 15 + 1 + slots[15][3] == 18
    code, _, src, _, imm = slots[16]
    assert (code, src) == (0x18, BPF_PSEUDO_FUNC)
    assert 16 + 1 + imm == MAIN_SLOTS + (len(copy) + len(one)) // 8
    assert slots[7] == slots[21] == (0x85, 0, 0, 0, BPF_FUNC_loop)
    assert slots[22][0] == slots[24][0] == 0x95  # exits
    for callback in (one, two):  # each ends in an exit; its page loop jumps back to the
        # first word's load, just after r6 = 0
        code_slots = decode(callback)
        assert code_slots[-1][0] == 0x95
        (back,) = [i for i, s in enumerate(code_slots) if s[0] == 0xA5]  # jlt imm
        top = back + 1 + code_slots[back][3]
        assert code_slots[top - 1] == (0xB7, 6, 0, 0, 0) and code_slots[top][0] == 0x79  # r6 = 0
    assert len(two) > len(one)  # the second key's multiplies


def test_the_copy_callback_stores_each_ranges_status_even_when_refused() -> None:
    _, copy, _, _ = program_parts(3, 4, 5)
    slots = decode(copy)
    assert slots[7][0] & 0xF0 == 0x20 and slots[7][4] == CHUNK  # size > CHUNK
    assert 7 + 1 + slots[7][3] == 15 and slots[5] == (0xB7, 0, 0, 0, -22)
    assert slots[9][0] == 0x57 and slots[9][4] == CHUNK - 1  # the offset masked
    assert slots[14] == (0x85, 0, 0, 0, BPF_FUNC_probe_read_kernel)
    assert slots[15] == (0x7B, 6, 0, 24, 0)  # *(u64 *)(r6 + 24) = r0: the status
    assert slots[2][4] == 4 and slots[3][4] == KEYS  # the table, after the keys


def test_unroll_factors_that_do_not_divide_a_page_are_refused() -> None:
    assert len(program(3, 4, 5, unroll=8)) < len(program(3, 4, 5, unroll=64))
    with pytest.raises(ValueError, match="do not divide"):
        program_parts(3, 4, 5, unroll=48)


def test_another_patchguards_page_hasher_is_known_by_its_tag() -> None:
    """The tag leaves the map references out: any process's pg_text_hash has the same one."""
    from patchguard.kernel.bpf.peers import rebuilt_programs, tags_of

    (rebuilt,) = rebuilt_programs("pg_text_hash", None)
    assert tags_of(rebuilt) == tags_of(program(7, 8, 9))


def test_pages_a_run_holds_must_be_a_power_of_two_the_masks_can_bound() -> None:
    assert [_chunk_pages(n) for n in ("16", "512", "1024")] == [16, 512, 1024]
    for bad in ("300", "8", "2048", "0", "-512", "lots", ""):
        with pytest.raises(ValueError, match="a power of two from 16 to 1024"):
            _chunk_pages(bad)
