"""Taint cross-checked: the global taint (memory, else procfs) against what modules carry, and a
procfs view that disagrees with memory; module taints read from struct module laid out with the
6.18 vmlinux BTF offsets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from support.memory_image import Image

from patchguard.kernel.btf import Btf
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_records import first_rip_load
from patchguard.kernel.taint import module_taint
from patchguard.surfaces.posture import MemoryTaintValue, ModuleTaint, PostureRecords, Taint
from patchguard.surfaces.posture.taint_truth import cross_check, letters_value

VMLINUX = Path(__file__).parent.parent / "fixtures/6.18-fc/sys/kernel/btf/vmlinux.gz"
OE = letters_value("OE")  # out-of-tree, unsigned: what every rootkit module carries
MODULE = 0xFFFFFFFFC0A03000


def test_letters_are_the_kernels_bits() -> None:
    assert OE == (1 << 12) | (1 << 13)


def test_a_global_taint_without_the_modules_bits_was_cleared() -> None:
    records = [
        Taint(0, ()),
        MemoryTaintValue(0, "tainted_mask"),
        ModuleTaint("pg_rootkit", OE, "struct module"),
        ModuleTaint("pg_rootkit", OE, "/sys/module/pg_rootkit/taint"),
    ]
    (found,) = cross_check(PostureRecords.of(records))
    assert found.technique == "taint-flags-cleared" and found.severity.name == "CRITICAL"
    assert found.evidence["missing"] == "OE"
    assert "tainted_mask in kernel memory" in found.summary
    assert "pg_rootkit carries OE (struct module)" in found.summary


def test_a_global_taint_that_holds_the_modules_bits_is_fine() -> None:
    records = [
        Taint(OE | 1 << 9, ()),
        MemoryTaintValue(OE | 1 << 9, "tainted_mask"),
        ModuleTaint("pg_rootkit", OE, "struct module"),
    ]
    assert cross_check(PostureRecords.of(records)) == []


def test_procfs_that_disagrees_with_memory_is_a_view_that_lies() -> None:
    records = [Taint(0, ()), MemoryTaintValue(OE, "tainted_mask"), ModuleTaint("m", OE, "x")]
    (found,) = cross_check(PostureRecords.of(records))
    assert found.technique == "filtered-view" and found.subject == "/proc/sys/kernel/tainted"


def test_without_memory_procfs_is_the_global_and_the_finding_says_so() -> None:
    (found,) = cross_check(PostureRecords.of([Taint(0, ()), ModuleTaint("m", OE, "/proc/modules")]))
    assert "/proc/sys/kernel/tainted (kernel memory could not be read)" in found.summary


def test_get_taint_loads_tainted_mask() -> None:
    # get_taint(): the ftrace site's NOP5, then mov rax, [rip+0x24ed881]; ret
    code = bytes.fromhex("0f1f440000 488b0581d84e02 c3")
    assert first_rip_load(code, 0xFFFFFFFF81100000) == 0xFFFFFFFF81100000 + 12 + 0x24ED881


def test_module_taints_come_from_its_own_struct() -> None:
    btf = Btf.parse(gzip.decompress(VMLINUX.read_bytes()))
    name_at, taints_at = btf.member_offset("module", "name"), btf.member_offset("module", "taints")
    assert name_at is not None and taints_at is not None
    raw = bytearray(2048)
    raw[name_at : name_at + 10] = b"pg_rootkit"
    struct.pack_into("<Q", raw, taints_at, OE)
    image = Image()
    image.put(MODULE, bytes(raw))
    assert module_taint(image, name_at, taints_at, MODULE, "pg_rootkit") == OE
    with pytest.raises(KernelAccessError, match="does not name it"):
        module_taint(image, name_at, taints_at, MODULE, "other")
