"""BPF trampolines recognised by their code, and their programs read from memory: on bytes read
live from the 6.18.44-fc machine (tests/fixtures/6.18-fc/bpf_trampolines.json: two trampolines
whose ftrace sites `scan` flagged, the helpers' addresses, and every struct read made of them),
with that kernel's vmlinux BTF."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.memory_image import Image

from patchguard.kernel.bpf.tramp_memory import LIST_POISON2, Offsets, TrampolineMemory, offsets
from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.surfaces.bpf_trampolines import HiddenProgram, HiddenTrampoline, site_finding
from patchguard.x86.bpf_trampoline import helper_addresses, recognise

FIXTURES = Path(__file__).parent.parent / "fixtures/6.18-fc"
CAPTURED: dict[str, Any] = json.loads((FIXTURES / "bpf_trampolines.json").read_text())
HELPERS = helper_addresses({n: int(a, 16) for n, a in CAPTURED["helpers"].items()})
# The offsets the live kernel's BTF gave when the structs were read (the fixture's vmlinux BTF
# is of an earlier build of 6.18-fc: bpf_prog_aux has since grown by 8 bytes before its name).
AT = Offsets(**CAPTURED["offsets"])


def test_offsets_come_from_btf() -> None:
    btf = Btf.parse(gzip.decompress((FIXTURES / "sys/kernel/btf/vmlinux.gz").read_bytes()))
    at = offsets(btf)
    assert (at.aux, at.tag, at.aux_id, at.ksym_lnode) == (AT.aux, AT.tag, AT.aux_id, AT.ksym_lnode)
    assert at.aux_name == AT.aux_name - 8


def memory() -> Image:
    image = Image()
    for address, data in CAPTURED["memory"].items():
        image.put(int(address, 16), bytes.fromhex(data))
    return image


def code(entry: dict[str, str]) -> tuple[bytes, int]:
    return bytes.fromhex(entry["code"]), int(entry["address"], 16)


def test_helpers_are_the_enter_and_exit_functions() -> None:
    names = set(HELPERS.values())
    assert {"__bpf_tramp_enter", "__bpf_tramp_exit", "__bpf_prog_enter_recur"} <= names
    assert all(n.startswith(("__bpf_prog_", "__bpf_tramp_")) for n in names)


@pytest.mark.parametrize("entry", CAPTURED["trampolines"], ids=lambda e: e["traced"])
def test_a_live_fexit_trampoline_is_recognised(entry: dict[str, str]) -> None:
    raw, address = code(entry)
    shape = recognise(raw, address, HELPERS)
    assert shape is not None and shape.calls_original and shape.image is not None
    (prog,) = shape.programs
    assert prog.after_original and prog.enter == "__bpf_prog_enter_recur"
    assert prog.prog >> 48 == 0xFFFF and prog.image is not None and prog.image >> 32 == 0xFFFFFFFF


def test_function_code_is_not_a_trampoline() -> None:
    raw, address = code(CAPTURED["not_trampoline"])
    assert recognise(raw, address, HELPERS) is None


def test_without_the_helpers_nothing_is_recognised() -> None:
    raw, address = code(CAPTURED["trampolines"][0])
    assert recognise(raw, address, {}) is None


def test_decoding_stops_at_the_trampolines_end() -> None:
    """The 512 bytes read at the first trampoline hold the next one too (they are 0x100
    apart): its program is not the first's."""
    raw, address = code(CAPTURED["trampolines"][0])
    assert raw.count(bytes.fromhex("4889e5")) == 2  # two `mov rbp, rsp`: two trampolines
    shape = recognise(raw, address, HELPERS)
    assert shape is not None and len(shape.programs) == 1


def test_programs_are_read_from_memory() -> None:
    structs = TrampolineMemory(memory(), AT)
    found = []
    for entry in CAPTURED["trampolines"]:
        shape = recognise(*code(entry), HELPERS)
        assert shape is not None and shape.image is not None
        prog = structs.program(shape.programs[0].prog)
        ksym = structs.image_ksym(shape.image)
        assert prog.attach_to == entry["traced"]
        assert prog.ksym is not None and prog.ksym.start == shape.programs[0].image
        assert prog.ksym.name == f"bpf_prog_{prog.tag}_{prog.name}" and prog.ksym.listed
        assert ksym.name.startswith("bpf_trampoline_") and ksym.start == shape.address
        found.append((prog.prog_id, prog.name))
    assert found == [(17, "x_bpf_prog_load"), (84, "f_iopl")]


def test_an_unlinked_symbol_is_said_off_the_list() -> None:
    shape = recognise(*code(CAPTURED["trampolines"][0]), HELPERS)
    assert shape is not None and shape.image is not None
    image = memory()
    lnode = shape.image + AT.image_ksym + AT.ksym_lnode
    image.put_words(lnode, lnode + 0x1000, LIST_POISON2)  # as list_del_rcu leaves it
    assert not TrampolineMemory(image, AT).image_ksym(shape.image).listed


def test_a_struct_not_in_memory_fails_as_such() -> None:
    with pytest.raises(KernelAccessError):
        TrampolineMemory(memory(), AT).program(0xFFFFC90000000000)


def hidden(in_bpf: bool, in_kallsyms: bool) -> HiddenTrampoline:
    structs = TrampolineMemory(memory(), AT)
    shape = recognise(*code(CAPTURED["trampolines"][0]), HELPERS)
    assert shape is not None and shape.image is not None
    seen = shape.programs[0]
    prog = HiddenProgram(
        seen.prog, seen.image, "fexit", structs.program(seen.prog), in_bpf, in_kallsyms
    )
    return HiddenTrampoline(shape.address, structs.image_ksym(shape.image), False, (prog,))


def test_the_finding_names_the_programs_and_the_views_missing_them() -> None:
    found = site_finding("ftrace-sites", "bpf_prog_load", 0xFFFFFFFF8153B4A0, hidden(*2 * [False]))
    assert found.technique == "hidden-bpf-trampoline" and found.severity.name == "CRITICAL"
    text = found.summary
    assert "bpf_trampoline_6442515782" in text and "id 17 'x_bpf_prog_load'" in text
    assert "on bpf_prog_load" in text and "tag b4e1a412e1f18b02" in text
    assert "bpf(2) lists 0 of these 1 program ids" in text
    assert "/proc/kallsyms does not show 2 of their 2 [bpf] symbols" in text
    assert "holds 2 of the 2" in text and "is filtered" in text
    assert found.evidence["program_ids"] == [17] and found.evidence["program_ids_bpf_lists"] == []


def test_a_program_bpf_lists_is_said_listed() -> None:
    tramp = hidden(True, True)
    found = site_finding("ftrace-sites", "bpf_prog_load", 1, replace(tramp, in_kallsyms=True))
    assert "bpf(2) lists 1 of these 1" in found.summary
    assert "does not show 0 of" in found.summary and "filtered" not in found.summary


def test_a_refused_listing_is_not_said_missing() -> None:
    tramp = replace(hidden(False, False), bpf_listing=False)
    found = site_finding("ftrace-sites", "bpf_prog_load", 1, tramp)
    assert "bpf(2) refused to list program ids" in found.summary
    assert "lists 0" not in found.summary


def test_the_kernels_bpf_kallsyms_list_is_walked_round() -> None:
    """The list (its head found in bpf_get_kallsym's first load) holds what /proc/kallsyms
    showed (the XDP dispatcher, patchguard's own programs) and the hidden trampolines and
    programs it did not."""
    structs = TrampolineMemory(memory(), AT)
    shape = recognise(*code(CAPTURED["trampolines"][1]), HELPERS)
    assert shape is not None and shape.image is not None
    walked = structs.listed(int(CAPTURED["bpf_kallsyms"], 16))
    assert len(walked) == CAPTURED["bpf_kallsyms_list"] > 100
    names = set(walked.values())
    assert set(CAPTURED["kallsyms_bpf"]) <= names
    assert {"bpf_trampoline_6442515782", "bpf_prog_b4e1a412e1f18b02_x_bpf_prog_load"} <= names
    assert walked[shape.address] == "bpf_trampoline_6442507646"


def test_a_list_that_leaves_kernel_space_is_refused() -> None:
    structs = TrampolineMemory(memory(), AT)
    shape = recognise(*code(CAPTURED["trampolines"][1]), HELPERS)
    assert shape is not None and shape.image is not None
    ksym = structs.image_ksym(shape.image)
    image = memory()
    image.put_words(ksym.at + AT.ksym_lnode, 0x1000)
    with pytest.raises(KernelAccessError, match="implausible"):
        TrampolineMemory(image, AT).listed(int(CAPTURED["bpf_kallsyms"], 16))
