"""Recognising another patchguard process's programs without the kernel: the tag the kernel
gives a program (map references zeroed; SHA-1 before 6.18, SHA-256 since), the lookup program
rebuilt from the name its instructions carry, and the command line of a patchguard process
(read from a directory laid out like /proc). The live test loads them for real."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from patchguard.kernel.bpf.insn import R0, R1, exit_insn, ld_imm64, ld_map_fd, mov64_imm
from patchguard.kernel.bpf.lookup import address_program, finder_program
from patchguard.kernel.bpf.peers import is_patchguard, lookup_program, tags_of


def test_tags_zero_map_references_and_cover_both_hashes() -> None:
    with_map = ld_map_fd(R1, 7) + mov64_imm(R0, 0) + exit_insn()
    other_fd = ld_map_fd(R1, 9) + mov64_imm(R0, 0) + exit_insn()
    assert tags_of(with_map) == tags_of(other_fd)  # the fd a process used is not in the tag
    plain = mov64_imm(R0, 0) + exit_insn()
    assert tags_of(plain) == {
        hashlib.sha1(plain).digest()[:8].hex(),
        hashlib.sha256(plain).digest()[:8].hex(),
    }
    constant = ld_imm64(R1, 7) + mov64_imm(R0, 0) + exit_insn()  # not a map: kept
    assert tags_of(constant) != tags_of(ld_imm64(R1, 9) + mov64_imm(R0, 0) + exit_insn())


@pytest.mark.parametrize("name", [b"tainted_mask", b"ftrace_pages_start", b"a" * 40])
def test_lookups_are_rebuilt_from_the_name_they_carry(name: bytes) -> None:
    assert lookup_program("pg_ksym_addr", address_program(name)) == address_program(name)
    assert lookup_program("pg_btf_find", finder_program(name, 4)) == finder_program(name, 4)
    assert lookup_program("pg_kmem_read", address_program(name)) is None
    assert lookup_program("pg_ksym_addr", mov64_imm(R0, 0) + exit_insn()) is None


def fake_process(proc: Path, pid: int, exe: str, *argv: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    os.symlink(exe, proc / str(pid) / "exe")
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_a_patchguard_process_is_python_running_its_cli(tmp_path: Path) -> None:
    fake_process(tmp_path, 1, "/usr/bin/python3.11", "python3", "-m", "patchguard.cli", "scan")
    fake_process(tmp_path, 2, "/opt/venv/bin/python3", "/opt/venv/bin/python3",
                 "/opt/venv/bin/patchguard", "guard")  # fmt: skip
    fake_process(tmp_path, 3, "/usr/bin/python3.11", "python3", "-m", "pytest", "patchguard")
    fake_process(tmp_path, 4, "/usr/local/bin/evil", "evil", "-m", "patchguard.cli")
    assert [is_patchguard(pid, tmp_path) for pid in (1, 2, 3, 4, 5)] == [
        True, True, False, False, False,
    ]  # fmt: skip
