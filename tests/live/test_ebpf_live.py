"""The ebpf surface on the running kernel, through `patchguard scan --json` in a subprocess:
real programs attached the ways real tools attach them, found with their attach point, helpers
and owner, and gone after detach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp

from patchguard.kernel.bpf.syscall import BpfError

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def scan_json(*surfaces: str) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "patchguard.cli",
        "scan",
        "--json",
        "--records",
        "--fail-on",
        "critical",
    ]
    for s in surfaces:
        args += ["--surface", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def programs(doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    ebpf = next(s for s in doc["surfaces"] if s["name"] == "ebpf")
    return {r["prog_id"]: r for r in ebpf["records"] if r["kind"] == "BpfProgram"}


def findings_for(doc: dict[str, Any], prog_id: int) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["evidence"].get("prog_id") == prog_id]


@pytest.fixture
def four_programs() -> Iterator[dict[str, bp.Loaded]]:
    """Tracepoint via perf event, raw tracepoint via link, a send_signal caller, a pin."""
    made: dict[str, bp.Loaded] = {}
    try:
        made["tp"] = bp.attach_tracepoint("syscalls", "sys_enter_kill", "pg_t_tp")
        made["raw"] = bp.attach_raw_tracepoint("sys_enter", "pg_t_raw")
        made["sig"] = bp.load(
            bp.BPF_PROG_TYPE_TRACEPOINT, bp.calls_helper(bp.BPF_FUNC_send_signal), "pg_t_sig"
        )
        made["pin"] = bp.pinned_orphan("pg_t_pin")
        yield made
    finally:
        for prog in made.values():
            prog.close()


def test_scan_reports_each_program_with_attach_point_helpers_and_owner(
    four_programs: dict[str, bp.Loaded],
) -> None:
    doc = scan_json("ebpf")
    progs = programs(doc)
    me = os.getpid()

    tp = progs[four_programs["tp"].prog_id]
    assert tp["name"] == "pg_t_tp" and tp["prog_type"] == "tracepoint"
    assert [a["via"] for a in tp["attachments"]] == ["perf_event"]
    assert tp["attachments"][0]["target"] == "tracepoint:sys_enter_kill"
    assert {o["pid"] for o in tp["owners"]} == {me}
    assert tp["owners"][0]["exe"] == os.path.realpath(sys.executable)

    raw = progs[four_programs["raw"].prog_id]
    assert raw["attachments"][0]["via"] == "link"
    assert raw["attachments"][0]["link_type"] == "raw_tracepoint"
    assert raw["attachments"][0]["target"] == "raw_tracepoint:sys_enter"

    sig = progs[four_programs["sig"].prog_id]
    assert "bpf_send_signal" in sig["helpers"]
    sig_findings = findings_for(doc, sig["prog_id"])
    assert any(f["technique"] == "rootkit-helper" and f["severity"] == "high" for f in sig_findings)

    pin = progs[four_programs["pin"].prog_id]
    assert pin["owners"] == [] and pin["pins"] == [four_programs["pin"].pin]

    for key in ("tp", "raw"):
        techniques = {f["technique"] for f in findings_for(doc, four_programs[key].prog_id)}
        assert "sensitive-hook" in techniques, key


def test_programs_are_gone_after_detach() -> None:
    ids = []
    with (
        bp.attach_tracepoint("syscalls", "sys_enter_kill") as tp,
        bp.attach_raw_tracepoint("sys_enter") as raw,
    ):
        ids = [tp.prog_id, raw.prog_id]
        assert set(ids) <= set(programs(scan_json("ebpf")))
    for prog_id in ids:
        assert bp.wait_gone(prog_id), f"prog {prog_id} still listed 5 s after detach"
    assert not set(ids) & set(programs(scan_json("ebpf")))


def test_program_kept_only_by_a_map_is_an_orphan() -> None:
    prog = bp.tail_call_orphan("pg_t_orphan")
    try:
        doc = scan_json("ebpf")
        record = programs(doc)[prog.prog_id]
        assert record["owners"] == [] and record["pins"] == [] and record["attachments"] == []
        assert record["second_look"] is True
        orphan = [f for f in findings_for(doc, prog.prog_id) if f["technique"] == "orphan-program"]
        assert orphan and orphan[0]["severity"] == "medium"
        assert "no link, on a second look too: kept alive only by" in orphan[0]["summary"]
    finally:
        prog.close()
    assert bp.wait_gone(prog.prog_id)


LOADER = """
import os, sys, time
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.insn import R0, exit_insn, mov64_imm
fd = bpf.prog_load(5, mov64_imm(R0, 0) + exit_insn(), "pg_t_deleted")
os.unlink(sys.argv[1])  # the loader removes its own executable
print("ready", flush=True)
sys.stdin.read()  # hold the program until the test closes stdin
"""


def test_loader_whose_executable_was_deleted(tmp_path: Path) -> None:
    exe = tmp_path / "agent"
    shutil.copy2(os.path.realpath(sys.executable), exe)
    env = {
        **os.environ,
        "PYTHONHOME": sys.base_prefix,
        "PYTHONPATH": str(Path(bp.__file__).parents[2] / "src"),
    }
    child = subprocess.Popen(
        [str(exe), "-c", LOADER, str(exe)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        doc = scan_json("ebpf")
        prog = next(p for p in programs(doc).values() if p["name"] == "pg_t_deleted")
        assert prog["owners"][0]["pid"] == child.pid
        assert prog["owners"][0]["exe_deleted"] is True
        deleted = [
            f for f in findings_for(doc, prog["prog_id"]) if f["technique"] == "loader-deleted"
        ]
        assert deleted and deleted[0]["severity"] == "high" and str(exe) in deleted[0]["summary"]
    finally:
        child.communicate(input="", timeout=10)
    assert bp.wait_gone(prog["prog_id"])


OWN_PROGRAMS = {"pg_kmem_read", "pg_task_iter", "pg_symbolize", "pg_btf_find", "pg_ksym_addr"}
OWN_MAPS = {"pg_kmem", "pg_fmt", "pg_sym"}


def test_scan_leaves_out_its_own_objects() -> None:
    """The memory reader, the task iterator (and its link), the symbolizer and the one-shot
    lookups are patchguard's, loaded by the scan beside the ebpf surface: not the host's. Those
    of another patchguard process running meanwhile (other scans on this machine) are shown as
    patchguard's (test_ebpf_peers_live.py); what is named so and held by anything else (a test
    process running patchguard's code in pytest, say) is the host's, and is left as it is."""
    from patchguard.kernel import Kernel
    from patchguard.kernel.bpf.objects import all_maps
    from patchguard.kernel.bpf.peers import is_patchguard
    from patchguard.scan import run_scan
    from patchguard.surfaces import all_surfaces

    kernel = Kernel()
    try:
        report = run_scan(kernel, all_surfaces())
        alive = {m.name for m in all_maps()}  # the reader's and symbolizer's maps are open
        assert alive >= OWN_MAPS
        [ebpf] = [r for r in report.results if r.surface.name == "ebpf"]
        own = kernel.own_prog_ids
        programs = list(ebpf.state.records.programs)
        assert not {p.prog_id for p in programs} & own
        for prog in programs:
            if prog.name in OWN_PROGRAMS and prog.patchguard_pid is None:
                assert not prog.owners or not all(is_patchguard(o.pid) for o in prog.owners)
        maps = {r.map_id for r in ebpf.state.records.maps}
        assert not maps & kernel.own_map_ids
        links = list(ebpf.state.records.links)
        assert not [r for r in links if r.link_type == "iter" and r.prog_id in own]
        assert report.memory_reader == "ebpf"
    finally:
        kernel.close()


def test_fentry_is_refused_with_a_clear_message() -> None:
    """These machines refuse fentry/fexit/LSM at load (EPERM, a policy of this kernel); the
    error must say so in one line. Tested for real in the QEMU lab."""
    btf_id = _vmlinux_func_id("do_sys_openat2")
    try:
        fd = bp.bpf.prog_load(
            26, bp.return_zero(), "pg_t_fentry", expected_attach_type=24, attach_btf_id=btf_id
        )
    except BpfError as exc:
        assert exc.where == "bpf(PROG_LOAD)"
        assert "\n" not in str(exc)
        assert exc.errno in (1, 22, 524)  # EPERM here; EINVAL/ENOTSUPP elsewhere
        return
    os.close(fd)  # a kernel that allows fentry: loading worked, nothing is attached


def _vmlinux_func_id(name: str) -> int:
    from patchguard.kernel import Kernel

    found = Kernel().vmlinux_btf.func_id(name)
    assert found is not None
    return found


def test_probe_write_user_is_refused_or_reported() -> None:
    """bpf_probe_write_user (helper 36), the helper rootkits use to lie to user space: these
    VMs' verifier refuses it (the error must be one clear line with the verifier's reason);
    where a kernel accepts it (the lab), the scan reports the program as a rootkit helper."""
    insns = bp.calls_helper(36)
    try:
        prog = bp.load(bp.BPF_PROG_TYPE_TRACEPOINT, insns, "pg_t_wuser")
    except BpfError as exc:
        print(f"case: refused: {exc}")
        assert exc.where == "bpf(PROG_LOAD)" and "\n" not in str(exc)
        verifier = exc.reason.split(": ", 1)[1]
        assert verifier and not verifier.startswith("processed "), verifier
        return
    with prog:
        found = {f["technique"] for f in findings_for(scan_json("ebpf"), prog.prog_id)}
    assert "rootkit-helper" in found
