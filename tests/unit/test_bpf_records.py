"""Pure pieces of the eBPF layer: instruction decoding, call sites, link info decoding,
/proc fdinfo and mountinfo parsing (captured on 6.18-fc), and the findings for a program."""

from __future__ import annotations

import struct
from pathlib import Path

from support.bpf_records import bpf_program

from patchguard.findings import Severity
from patchguard.kernel.bpf import insn as bi
from patchguard.kernel.bpf.objects import _decode_link, call_sites
from patchguard.kernel.bpf.owners import parse_exe_link, parse_fdinfo
from patchguard.kernel.mounts import mounted_types
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.ebpf import Attachment, BpfProgram, Owner, assess_program
from patchguard.surfaces.ebpf.records import BpfLink, EbpfRecords
from patchguard.surfaces.ebpf.surface import settle_orphans

FIXTURE = Path(__file__).parent.parent / "fixtures" / "6.18-fc"


def test_call_sites_separate_helpers_kfuncs_and_bpf_to_bpf_calls() -> None:
    prog = b"".join(
        [
            bi.call(0x1234),  # helper, imm = offset from __bpf_call_base after fixup
            bi.insn(bi.BPF_JMP | bi.BPF_CALL, src=bi.BPF_PSEUDO_KFUNC_CALL, imm=777),
            bi.insn(bi.BPF_JMP | bi.BPF_CALL, src=bi.BPF_PSEUDO_CALL, imm=3),  # bpf-to-bpf
            bi.call(0x1234),  # the same helper twice is listed once
            bi.ld_map_fd(bi.R1, 5),  # its second slot has code 0: not a call
            bi.exit_insn(),
        ]
    )
    sites = call_sites(prog)
    assert sites.helper_offsets == (0x1234,)
    assert sites.kfunc_btf_ids == (777,)
    assert not sites.hidden


def test_zeroed_helper_targets_mean_hidden() -> None:
    assert call_sites(bi.call(0) + bi.exit_insn()).hidden
    assert not call_sites(bi.exit_insn()).hidden


def test_instruction_encoding_round_trips() -> None:
    code = bi.ldx_mem(8, bi.R2, bi.R6, 8) + bi.ld_map_fd(bi.R1, 9)
    assert bi.decode(code) == [
        (bi.BPF_LDX | bi.BPF_MEM | bi.BPF_DW, 2, 6, 8, 0),
        (bi.BPF_LD | bi.BPF_DW | bi.BPF_IMM, 1, bi.BPF_PSEUDO_MAP_FD, 0, 9),
        (0, 0, 0, 0, 0),
    ]


def _link_raw(link_type: int, link_id: int, prog_id: int, union: bytes) -> bytes:
    return struct.pack("<III4x", link_type, link_id, prog_id) + union.ljust(80, b"\0")


def test_decode_links_of_several_types() -> None:
    tracing = _decode_link(_link_raw(2, 7, 40, struct.pack("<III", 24, 1, 5150)), "tracing", None)
    assert (tracing.attach_type, tracing.target_obj_id, tracing.target_btf_id) == (
        "trace_fentry",
        1,
        5150,
    )
    raw = _decode_link(_link_raw(1, 8, 41, b""), "raw_tracepoint", "sys_enter")
    assert raw.target == "raw_tracepoint:sys_enter"
    kprobe = _decode_link(
        _link_raw(7, 9, 42, struct.pack("<I4xQII", 3, 0, 0, 0x10)), "perf_event", "commit_creds"
    )
    assert kprobe.target == "kprobe:commit_creds+0x10"
    tp = _decode_link(_link_raw(7, 10, 43, struct.pack("<I", 5)), "perf_event", "sys_enter_kill")
    assert tp.target == "tracepoint:sys_enter_kill"
    nf = _decode_link(_link_raw(10, 11, 44, struct.pack("<IIiI", 2, 1, -100, 0)), "netfilter", None)
    assert nf.target == "netfilter pf 2 hook 1 priority -100"
    xdp = _decode_link(_link_raw(6, 12, 45, struct.pack("<I", 3)), "xdp", None)
    assert xdp.target == "ifindex 3"


def test_fdinfo_of_real_bpf_fds() -> None:
    prog = parse_fdinfo((FIXTURE / "fdinfo" / "bpf-prog").read_text())
    assert prog["prog_id"] == "111" and prog["prog_type"] == "17"
    link = parse_fdinfo((FIXTURE / "fdinfo" / "bpf_link").read_text())
    assert (link["link_id"], link["prog_id"], link["tp_name"]) == ("92", "111", "sys_enter")
    assert "prog_id" not in parse_fdinfo((FIXTURE / "fdinfo" / "perf_event").read_text())
    assert parse_fdinfo("odd line without colon\n: empty key\n") == {"": "empty key"}


def test_exe_link_deleted_suffix() -> None:
    assert parse_exe_link("/usr/bin/agent (deleted)") == ("/usr/bin/agent", True)
    assert parse_exe_link("/usr/bin/agent") == ("/usr/bin/agent", False)


def test_mountinfo_finds_pseudo_filesystems() -> None:
    types = mounted_types((FIXTURE / "proc" / "self" / "mountinfo").read_text())
    assert types["/sys/fs/bpf"] == "bpf"
    assert types["/sys/kernel/tracing"] == "tracefs"
    assert mounted_types("truncated line\n1 2 3\n") == {}


def _program(**overrides: object) -> BpfProgram:
    agent = Owner(1, "agent", "/usr/bin/agent", False, False, 3)
    return bpf_program(**{"owners": (agent,), **overrides})


def techniques(prog: BpfProgram) -> dict[str, Severity]:
    return {f.technique: f.severity for f in assess_program(prog)}


def test_benign_program_has_no_finding() -> None:
    attach = (Attachment("perf_event", "tracepoint:sched_switch"),)
    assert techniques(_program(attachments=attach, helpers=("bpf_ktime_get_ns",))) == {}


def test_rootkit_helpers_and_sensitive_hooks() -> None:
    prog = _program(
        helpers=("bpf_probe_write_user",),
        attachments=(Attachment("perf_event", "kprobe:__x64_sys_getdents64"),),
    )
    found = techniques(prog)
    assert found == {"rootkit-helper": Severity.HIGH, "sensitive-hook": Severity.MEDIUM}


def test_orphan_and_deleted_loader() -> None:
    assert techniques(_program(owners=()))["orphan-program"] == Severity.MEDIUM
    assert "orphan-program" not in techniques(_program(owners=(), pins=("/sys/fs/bpf/x",)))
    deleted = (Owner(9, "ldr", "/tmp/ldr", True, False, 4),)
    assert techniques(_program(owners=deleted))["loader-deleted"] == Severity.HIGH
    missing = (Owner(9, "ldr", "/tmp/gone", False, True, 4),)
    finding = next(
        f for f in assess_program(_program(owners=missing)) if f.technique == "loader-deleted"
    )
    assert "not on disk" in finding.summary and finding.attack_id == "T1070.004"


def test_lsm_program_is_named_with_its_hook() -> None:
    prog = _program(prog_type="lsm", attach_btf="bpf_lsm_file_open")
    found = techniques(prog)
    assert found["lsm-hook"] == Severity.MEDIUM and found["sensitive-hook"] == Severity.MEDIUM


def test_both_names_of_a_link_fd_are_links() -> None:
    from patchguard.kernel.bpf.owners import FD_KINDS

    # created by BPF_LINK_CREATE / RAW_TRACEPOINT_OPEN, and re-opened from a pin (6.1, lab)
    assert FD_KINDS["anon_inode:bpf_link"] == FD_KINDS["anon_inode:bpf-link"] == "link"


def test_map_operations_are_named_by_their_helper() -> None:
    from patchguard.surfaces.ebpf import helper_name

    # seen for a bpftrace one-liner on 6.18-fc: a per-CPU hash map's inlined lookup and update
    assert helper_name("__htab_map_lookup_elem") == "bpf_map_lookup_elem"
    assert helper_name("htab_percpu_map_update_elem") == "bpf_map_update_elem"
    assert helper_name("array_map_lookup_elem") == "bpf_map_lookup_elem"
    assert helper_name("bpf_get_current_comm") == "bpf_get_current_comm"
    assert helper_name("bpf_send_signal") == "bpf_send_signal"


def test_verifier_reason_skips_the_statistics() -> None:
    from patchguard.kernel.bpf.syscall import verifier_reason

    log = (
        "0: R1=ctx() R10=fp0\n0: (b7) r1 = 0\n1: (85) call bpf_probe_write_user#36\n"
        "unknown func bpf_probe_write_user#36\n"
        "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0\n"
    )
    assert verifier_reason(log) == "unknown func bpf_probe_write_user#36"
    assert verifier_reason("") == ""


def test_no_surface_record_has_a_field_named_kind() -> None:
    # scan --json names each record's type in "kind"; a field of that name would replace it
    import dataclasses
    import importlib
    import pkgutil

    import patchguard.surfaces

    clashes = []
    for info in pkgutil.walk_packages(patchguard.surfaces.__path__, "patchguard.surfaces."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            is_record = isinstance(obj, type) and dataclasses.is_dataclass(obj)
            if is_record and any(f.name == "kind" for f in dataclasses.fields(obj)):
                clashes.append(f"{obj.__module__}.{name}")
    assert clashes == []


def _state(*programs: BpfProgram, links: tuple[BpfLink, ...] = ()) -> SurfaceState[EbpfRecords]:
    return SurfaceState("ebpf", EbpfRecords(programs, links))


def test_an_orphan_is_said_only_when_a_second_look_agrees() -> None:
    loader = (Owner(9, "ldr", "/usr/sbin/ldr", False, False, 4),)
    link = BpfLink(5, "perf_event", 3, None, None, loader, ())
    linked = _program(prog_id=3, owners=(), attachments=(Attachment("link", "tracepoint:x", 5),))
    first = _state(
        _program(prog_id=1, owners=loader),  # kept: not looked at again
        _program(prog_id=2, owners=()),  # gone by the second read: freed, not an orphan
        _program(prog_id=3, owners=()),  # its loader took a link meanwhile
        _program(prog_id=4, owners=()),  # kept by nothing both times
    )
    second = _state(linked, _program(prog_id=4, owners=()), links=(link,))
    settled = settle_orphans(first, second, {2, 3, 4})
    by_id = {p.prog_id: p for p in settled.records.programs}
    assert sorted(by_id) == [1, 3, 4] and settled.records.links == (link,)
    assert settled.counts == {"programs": 3, "links": 1, "maps": 0}
    assert "orphan-program" not in techniques(by_id[3])
    assert by_id[4].second_look and not by_id[3].second_look
    (orphan,) = [f for f in assess_program(by_id[4]) if f.technique == "orphan-program"]
    assert orphan.summary.startswith("no process holds it, no pin, no link, on a second look too:")
