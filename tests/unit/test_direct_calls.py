"""A direct ftrace call named by what it reaches, and sanctioned only by that: the BPF trampoline
at its target and the programs the trampoline runs. The trampoline is the one read live from the
6.18.44-fc machine (tests/fixtures/6.18-fc/bpf_trampolines.json: its code, recognised, and its
program's struct read from memory: fexit prog 84 `f_iopl` on __x64_sys_iopl); the findings are
the tracing surface's own; the exceptions come from a real ledger (test_match_hooks.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_bpf_trampolines import AT, CAPTURED, HELPERS, code, memory
from test_match_hooks import exceptions

from patchguard.findings import Finding
from patchguard.integrity.owners import Owners, _direct_owner
from patchguard.kernel import Kernel
from patchguard.kernel.attribution import Attributor
from patchguard.kernel.bpf.tramp_memory import TrampolineMemory
from patchguard.kernel.ftrace_records import site_function
from patchguard.kernel.kallsyms import AddressRange, SymbolTable
from patchguard.policy.match_hooks import apply_hook_exceptions
from patchguard.surfaces.bpf_trampolines import HiddenProgram, HiddenTrampoline, _direct_call
from patchguard.surfaces.ebpf import Attachment, BpfProgram, Owner
from patchguard.surfaces.tracing import FtraceCallback, FtraceHook, TracingRecords, assess_records
from patchguard.surfaces.tracing.records import DirectCall
from patchguard.x86.bpf_trampoline import recognise

SITE = 0xFFFFFFFF81040F30  # __x64_sys_iopl's ftrace site (the symbol table below)
TRAMP = CAPTURED["trampolines"][1]  # the trampoline on __x64_sys_iopl
KALLSYMS = f"""\
ffffffff81000000 T _stext
{SITE:016x} T __x64_sys_iopl
{SITE + 0x60:016x} T __x64_sys_ioperm
ffffffff82000000 T _etext
"""
DIRECT_OPS = FtraceCallback("tramp", "ftrace_regs_caller+0x0/0x100", "call_direct_funcs+0x0/0x20")
HOOK = FtraceHook("__x64_sys_iopl", None, 1, "R   D", (DIRECT_OPS,), direct="bpf_trampoline+0x0")
# The loader: this test's own process, as /proc shows it (a process holds the program).
LOADER = os.readlink("/proc/self/exe")
SHA = hashlib.sha256(Path(LOADER).read_bytes()).hexdigest()
PROGRAM = f"""
[[bpf_program]]
name = "f_iopl"
prog_type = "tracing"
attach = ["__x64_sys_iopl"]
helpers = ["bpf_get_current_pid_tgid"]
loader = {{ path = "{LOADER}", sha256 = "{SHA}" }}
"""


def names() -> Attributor:
    symbols = SymbolTable(KALLSYMS)
    return Attributor(
        symbols, [AddressRange("text", 0xFFFFFFFF81000000, 0xFFFFFFFF82000000)], {}, None
    )


def trampoline(in_bpf: bool = True, in_kallsyms: bool = True) -> HiddenTrampoline:
    """The live trampoline as the views showed it: bpf(2) and /proc/kallsyms listing its
    program and itself (in_bpf, in_kallsyms), or not (as they did on that machine)."""
    structs = TrampolineMemory(memory(), AT)
    shape = recognise(*code(TRAMP), HELPERS)
    assert shape is not None and shape.image is not None
    seen = shape.programs[0]
    prog = HiddenProgram(
        seen.prog, seen.image, "fexit", structs.program(seen.prog), in_bpf, in_kallsyms
    )
    ksym = structs.image_ksym(shape.image)
    return HiddenTrampoline(shape.address, ksym, in_kallsyms, (prog,))


def record(
    prog_id: int = 84, helpers: tuple[str, ...] = ("bpf_get_current_pid_tgid",)
) -> BpfProgram:
    """The ebpf surface's record of the program, as a loader holding it gives it."""
    return BpfProgram(
        prog_id=prog_id,
        prog_type="tracing",
        name="f_iopl",
        tag="",
        loaded_at="2026-12-07T10:00:00+00:00",
        created_by_uid=0,
        map_ids=(),
        btf_id=1,
        attach_btf="__x64_sys_iopl",
        helpers=helpers,
        kfuncs=(),
        attachments=(Attachment("link", "__x64_sys_iopl", 9, "tracing", None),),
        owners=(Owner(os.getpid(), "python3", LOADER, False, False, 3),),
        pins=(),
    )


def call(tramp: HiddenTrampoline | None = None, prog: BpfProgram | None = None) -> DirectCall:
    tramp = trampoline() if tramp is None else tramp
    records = {84: (prog or record(), ())}
    return _direct_call(names(), SITE, tramp.address, tramp, records)


def test_the_call_is_named_by_its_trampoline_and_program() -> None:
    found = call()
    assert (found.function, found.trampoline) == ("__x64_sys_iopl", "bpf_trampoline_6442507646")
    assert found.known and found.prog_ids == [84]
    (prog,) = found.programs
    assert (prog.name, prog.attach, prog.attach_to, prog.listed) == (
        "f_iopl",
        "fexit",
        "__x64_sys_iopl",
        True,
    )
    assert (
        "BPF trampoline bpf_trampoline_6442507646 at 0xffffffffc0023580 running fexit prog 84"
        in (found.said)
    )


def test_a_program_bpf_does_not_list_leaves_the_call_unknown() -> None:
    found = call(trampoline(in_bpf=False))
    assert not found.known and "which bpf(2) does not list" in found.said


def test_a_trampoline_kallsyms_does_not_show_is_unknown() -> None:
    assert not call(trampoline(in_kallsyms=False)).known


def test_a_program_verified_for_another_function_is_unknown() -> None:
    """The site is __x64_sys_ioperm's, the program was verified for __x64_sys_iopl."""
    tramp = trampoline()
    found = _direct_call(names(), SITE + 0x60, tramp.address, tramp, {84: (record(), ())})
    assert found.function == "__x64_sys_ioperm" and not found.known


def test_code_that_is_no_trampoline_is_said_as_such() -> None:
    found = _direct_call(names(), SITE, 0xFFFFFFFFC0400000, None, {})
    assert found.trampoline is None and not found.known and not found.programs
    assert "which is no BPF trampoline" in found.said and "0xffffffffc0400000" in found.said


def assessed(direct: DirectCall) -> list[Finding]:
    return assess_records(TracingRecords.of([HOOK, direct]))


def techniques(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.technique, f.disposition.value) for f in found]


def test_the_hooks_finding_names_the_programs(tmp_path: Path) -> None:
    (found,) = assessed(call())
    assert found.technique == "ftrace-hook-sensitive-function"
    assert found.evidence["direct_prog_ids"] == [84]
    assert found.evidence["direct_trampoline"] == "bpf_trampoline_6442507646"
    assert found.evidence["direct_known"] is True


def test_every_program_declared_sanctions_the_direct_call(tmp_path: Path) -> None:
    direct = call()
    out = apply_hook_exceptions(assessed(direct), exceptions(tmp_path, PROGRAM), direct=[direct])
    assert techniques(out) == [("ftrace-hook-sensitive-function", "allowed")]


def test_the_direct_ops_handler_declared_sanctions_nothing(tmp_path: Path) -> None:
    """`owner = "call_direct_funcs"` would sanction any direct call on the function."""
    direct = call()
    body = '[[ftrace]]\nfunction = "__x64_sys_iopl"\nowner = "call_direct_funcs"\n'
    out = apply_hook_exceptions(assessed(direct), exceptions(tmp_path, body), direct=[direct])
    assert techniques(out) == [
        ("ftrace-hook-sensitive-function", "suspicious"),
        ("exception-mismatch", "suspicious"),
    ]
    assert "matches no [[bpf_program]]" in out[1].summary and "prog 84 'f_iopl'" in out[1].summary


def test_a_program_that_differs_keeps_the_finding(tmp_path: Path) -> None:
    direct = call(prog=record(helpers=("bpf_get_current_pid_tgid", "bpf_override_return")))
    out = apply_hook_exceptions(assessed(direct), exceptions(tmp_path, PROGRAM), direct=[direct])
    assert techniques(out) == [
        ("ftrace-hook-sensitive-function", "suspicious"),
        ("exception-mismatch", "suspicious"),
    ]
    assert "calls helpers not declared: bpf_override_return" in out[1].summary


@pytest.mark.parametrize("tramp", [None, trampoline(in_bpf=False)], ids=["no-tramp", "hidden"])
def test_an_unknown_reach_is_a_finding_no_exception_covers(
    tmp_path: Path, tramp: HiddenTrampoline | None
) -> None:
    target = tramp.address if tramp is not None else 0xFFFFFFFFC0400000
    direct = _direct_call(names(), SITE, target, tramp, {})
    found = assessed(direct)
    assert [f.technique for f in found] == [
        "ftrace-direct-unaccounted",
        "ftrace-hook-sensitive-function",
    ]
    assert direct.said in found[0].summary
    out = apply_hook_exceptions(found, exceptions(tmp_path, PROGRAM), direct=[direct])
    assert all(f.disposition.value != "allowed" for f in out)


def test_without_the_memory_read_nothing_is_sanctioned(tmp_path: Path) -> None:
    out = apply_hook_exceptions(assessed(call()), exceptions(tmp_path, PROGRAM), direct=[])
    assert "allowed" not in {f.disposition.value for f in out}


def test_check_names_the_trampoline_and_programs_as_owner(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text(KALLSYMS)
    owners = Owners({SITE: "ftrace ops (call_direct_funcs+0x0/0x20)"}, frozenset(), {})
    _direct_owner(Kernel(tmp_path), owners, call(), {})
    assert owners.ftrace[SITE] == call().said and "call_direct_funcs" not in owners.ftrace[SITE]
    _direct_owner(Kernel(tmp_path), owners, call(trampoline(in_bpf=False)), {})
    assert SITE not in owners.ftrace  # an unknown reach explains nothing


def test_the_owner_says_through_which_links_held_by_whom(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text(KALLSYMS)
    owners = Owners({SITE: "ftrace ops (call_direct_funcs+0x0/0x20)"}, frozenset(), {})
    link = "BPF link 7 (prog 10; /sys/fs/bpf/kept-link)"
    _direct_owner(Kernel(tmp_path), owners, call(), {SITE: [link]})
    assert owners.ftrace[SITE] == f"{call().said}; {link}"


def test_another_callback_is_kept_beside_the_trampoline(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text(KALLSYMS)
    beside = "ftrace ops (call_direct_funcs+0x0/0x20, kprobe_ftrace_handler+0x0/0x100)"
    owners = Owners({SITE: beside}, frozenset(), {})
    _direct_owner(Kernel(tmp_path), owners, call(), {})
    assert owners.ftrace[SITE].startswith(call().said) and beside in owners.ftrace[SITE]


@pytest.mark.parametrize(
    ("ip", "named"),
    [
        (SITE, ("__x64_sys_iopl", None)),
        (SITE + 4, ("__x64_sys_iopl", None)),  # after its ENDBR64 (IBT), as on the lab's 6.12
        (SITE + 8, ("__x64_sys_iopl+0x8", None)),
    ],
)
def test_a_site_is_named_as_enabled_functions_names_it(ip: int, named: tuple[str, None]) -> None:
    assert site_function(names(), ip) == named
