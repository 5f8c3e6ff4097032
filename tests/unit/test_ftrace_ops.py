"""The ftrace ops list read from memory, and compared with the text views: on memory read live
from the 6.18.44-fc machine (tests/fixtures/6.18-fc/ftrace_ops.json: every read the walk of
ftrace_ops_list and of ftrace's direct_functions made, the bytes at each traced site, and what
kallsyms names each), with the offsets that kernel's BTF gave."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.memory_image import Image

from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_ops import FtraceOps, OpsLayout, filter_entries, read_ops
from patchguard.kernel.memory import read_u64
from patchguard.surfaces.tracing.ops import (
    NamedOps,
    direct_call_disagreements,
    direct_mismatches,
    ops_findings,
    ops_record,
)
from patchguard.surfaces.tracing.records import TracingRecords

FIXTURES = Path(__file__).parent.parent / "fixtures/6.18-fc"
CAPTURED: dict[str, Any] = json.loads((FIXTURES / "ftrace_ops.json").read_text())
AT = OpsLayout(**CAPTURED["offsets"])
HEAD = int(CAPTURED["ftrace_ops_list"], 16)
DIRECT = int(CAPTURED["direct_functions"], 16)


def memory(with_sites: bool = False) -> Image:
    image = Image()
    for address, data in CAPTURED["memory"].items():
        image.put(int(address, 16), bytes.fromhex(data))
    for address, site in CAPTURED["sites"].items() if with_sites else ():
        image.put(int(address, 16), bytes.fromhex(site["code"]))
    return image


def function(ip: int) -> str:
    return str(CAPTURED["sites"][f"{ip:#x}"]["function"]).removesuffix("+0x0")


def named(ops: list[FtraceOps]) -> list[NamedOps]:
    return [
        NamedOps(o, ("call_direct_funcs", None), {ip: function(ip) for ip in o.traced}) for o in ops
    ]


def current() -> dict[int, int]:
    image = memory()
    return filter_entries(image, read_u64(image, DIRECT), AT)


def test_the_ops_list_is_walked_from_its_head() -> None:
    ops = read_ops(memory(), HEAD, AT)
    assert len(ops) == 80 and all(o.enabled for o in ops)
    assert all(
        o.flag_names == ("ENABLED", "DYNAMIC", "SAVE_REGS", "INITIALIZED", "DIRECT") for o in ops
    )
    assert all(len(o.traced) == 1 and not o.all_functions for o in ops)
    traced = {function(ip) for o in ops for ip in o.traced}
    assert {"commit_creds", "bpf_prog_load", "__x64_sys_ptrace", "vsock_connect"} <= traced


def test_direct_functions_is_what_the_sites_call() -> None:
    """ftrace's direct_functions hash holds the target each site calls now; an ops' own filter
    entry keeps the one it was registered with (vsock_connect's trampoline has since moved)."""
    calls = {int(a, 16): bytes.fromhex(s["code"]) for a, s in CAPTURED["sites"].items()}
    now = current()
    assert now.keys() == calls.keys()
    for ip, code in calls.items():
        assert (
            code[0] == 0xE8
            and (ip + 5 + int.from_bytes(code[1:], "little", signed=True)) & ((1 << 64) - 1)
            == now[ip]
        )
    registered = {ip: d for o in read_ops(memory(), HEAD, AT) for ip, d in o.traced.items()}
    moved = [function(ip) for ip in now if registered[ip] != now[ip]]
    assert moved == ["vsock_connect"]


def test_sites_that_call_what_ftrace_records_are_no_finding() -> None:
    ops = named(read_ops(memory(), HEAD, AT))
    assert direct_mismatches(memory(with_sites=True), ops, current()) == []


def test_a_site_calling_elsewhere_than_direct_functions_is_found() -> None:
    ops = named(read_ops(memory(), HEAD, AT))
    now = current()
    ip = next(ip for ip in now if function(ip) == "commit_creds")
    now[ip] += 0x100  # ftrace's record says one trampoline, the site calls another
    (found,) = direct_mismatches(memory(with_sites=True), ops, now)
    assert found.function == "commit_creds" and found.calls == now[ip] - 0x100
    (finding,) = ops_findings(TracingRecords.of([found]))
    assert finding.technique == "ftrace-direct-mismatch" and "commit_creds" in finding.summary


def test_a_function_two_ops_trace_is_not_compared() -> None:
    ops = named(read_ops(memory(), HEAD, AT))
    now = current()
    ip = next(iter(ops[0].ops.traced))
    now[ip] += 0x100
    twice = [*ops, replace(ops[0], ops=replace(ops[0].ops, address=1))]
    assert direct_mismatches(memory(with_sites=True), twice, now) == []


def _holding(ops: list[NamedOps], now: dict[int, int]) -> dict[int, int | None]:
    """Each ops' direct_call as a 6.6+ kernel keeps it: the target of its one function."""
    return {n.ops.address: now[next(iter(n.ops.traced))] for n in ops}


def test_direct_ops_holding_what_ftrace_records_are_no_finding() -> None:
    ops, now = named(read_ops(memory(), HEAD, AT)), current()
    assert direct_call_disagreements(ops, now, _holding(ops, now)) == []
    assert direct_call_disagreements(ops, now, dict.fromkeys(_holding(ops, now))) == []  # < 6.6


def test_a_direct_ops_whose_direct_call_leads_elsewhere_is_found() -> None:
    """What call_direct_funcs calls where the site is shared: the ops' field, not the hash."""
    ops, now = named(read_ops(memory(), HEAD, AT)), current()
    calls = _holding(ops, now)
    (ip,) = [ip for ip in now if function(ip) == "commit_creds"]
    (op,) = [n.ops.address for n in ops if ip in n.ops.traced]
    calls[op] = 0xFFFFFFFFC0DE0000  # rewritten in the ops, direct_functions left as it was
    (found,) = direct_call_disagreements(ops, now, calls)
    assert (found.function, found.via, found.recorded) == ("commit_creds", "direct_call", now[ip])
    found = replace(found, calls_name="pg_stub+0x0 [pg_rootkit]")
    (finding,) = ops_findings(TracingRecords.of([found]))
    assert finding.technique == "ftrace-direct-mismatch" and finding.disposition == "tampering"
    assert finding.summary.startswith(
        f"ftrace's own direct_functions records that commit_creds's direct call goes to "
        f"{now[ip]:#x}, but its direct ops (call_direct_funcs) holds direct_call "
        "0xffffffffc0de0000 (pg_stub+0x0 [pg_rootkit]): call_direct_funcs follows direct_call"
    )
    assert finding.evidence["ops_direct_call_reaches"] == "pg_stub+0x0 [pg_rootkit]"


def test_enabled_functions_hiding_what_memory_traces_is_a_filtered_view() -> None:
    ops = named(read_ops(memory(), HEAD, AT))
    everything = frozenset(f for n in ops for f in n.functions.values())
    records = [ops_record(n, everything - {"commit_creds"}) for n in ops]
    (finding,) = ops_findings(TracingRecords.of(records))
    assert finding.technique == "filtered-view"
    assert finding.summary.startswith(
        "enabled_functions hides 1 function that ftrace ops call_direct_funcs traces (commit_creds)"
    )
    assert ops_findings(TracingRecords.of([ops_record(n, everything) for n in ops])) == []


def test_unread_enabled_functions_hides_nothing() -> None:
    ops = named(read_ops(memory(), HEAD, AT))
    assert all(ops_record(n, None).hidden_count == 0 for n in ops)


def test_a_list_that_leaves_kernel_space_is_refused() -> None:
    image = memory()
    image.put_words(HEAD, 0x1000)
    with pytest.raises(KernelAccessError, match="implausible"):
        read_ops(image, HEAD, AT)
