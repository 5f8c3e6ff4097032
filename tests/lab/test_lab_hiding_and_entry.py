"""Hiding and entry hijacks (a hidden pid, MSR_LSTAR, netfilter hooks of a hidden module), in one
guest boot: guest_hiding_and_entry.py runs patchguard and records what it said; it is asserted
here.

- pg_hide_pid: an ftrace IPMODIFY hook on __x64_sys_getdents64 that removes one pid's entry
  from directory listings: the processes cross-view must find the pid.
- pg_lstar: MSR_LSTAR pointed on every CPU at a module trampoline that jumps on to
  entry_SYSCALL_64 (the lab's CPU has no PTI, so the guest lives): the entry surface must name
  the trampoline on each CPU.
- pg_nf_hook: a netfilter hook on ipv4 input, first from a listed module (named, not flagged,
  beside a legitimate nftables chain), then from a module that hid itself (Debian's 6.1 has
  no nfnetlink hook dump, so the hook lists are read from kernel memory).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.lab_guest import Results, findings, one, records, run_lab, run_script

pytestmark = pytest.mark.lab

MODULES = ("pg_hide_pid", "pg_lstar", "pg_nf_hook")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    results = tmp_path_factory.mktemp("rootkits3")
    return run_script(results, "guest_hiding_and_entry.py", MODULES, kaslr=False)


def test_the_rootkits_load_and_take_effect(guest: Results) -> None:
    for step in ("insmod_hide_pid", "insmod_lstar", "insmod_nf_hook", "insmod_nf_hidden"):
        assert guest[step]["rc"] == 0, (step, guest[step]["stderr"])
    views = guest["pid_views"]
    assert not views["listed"] and views["stat"]  # hidden from getdents64, still there
    assert int(views["params"]["hidden"]) > 0
    trampoline = guest["lstar"]["symbols"]["pg_lstar_entry"].split()[0]
    assert set(guest["lstar"]["cpus"].values()) == {trampoline}
    assert set(guest["lstar_after"]["cpus"].values()) == {guest["lstar"]["entry_SYSCALL_64"]}
    assert int(guest["nf_views"]["params"]["packets"]) >= guest["packets"]
    assert guest["nft_chain"]["rc"] == 0, guest["nft_chain"]["stderr"]
    hidden = guest["nf_hidden_views"]
    assert not hidden["proc_modules"] and not hidden["symbols"]


def test_clean_guest_has_no_findings(guest: Results) -> None:
    assert findings(guest, "scan_before") == []
    views = records(guest, "scan_before", "processes", "ProcessViews")[0]
    assert views["iterated"] > 0  # the BPF task iterator ran on Debian's 6.1


def test_hidden_pid_is_found_by_cross_view(guest: Results) -> None:
    pid = guest["victim"]
    finding = one(guest, "scan_hidden_pid", technique="hidden-process")
    # kernel memory has it, so the listings that lack it lie: critical
    assert finding["severity"] == "critical" and finding["disposition"] == "tampering"
    evidence = finding["evidence"]
    assert evidence["pid"] == pid and evidence["comm"] == "sleep"
    assert {"proc_listing", "task_listing"} <= set(evidence["missing_from"])
    assert {"kill", "bpf_task_iter", "kernel_memory", "pid_table"} <= set(evidence["seen_by"])
    hook = one(guest, "scan_hidden_pid", technique="ftrace-ipmodify")
    assert hook["subject"] == "__x64_sys_getdents64"
    assert "pg_hide_pid" in str(hook["evidence"])
    assert findings(guest, "scan_pid_back") == []


def test_lstar_redirect_is_named_on_every_cpu(guest: Results) -> None:
    hijacks = findings(guest, "scan_lstar", technique="syscall-entry-hijack")
    cpus = sorted(guest["lstar"]["cpus"], key=int)
    assert sorted(f["evidence"]["cpu"] for f in hijacks) == [int(c) for c in cpus]
    for finding in hijacks:
        assert finding["severity"] == "critical" and finding["disposition"] == "tampering"
        assert finding["evidence"]["symbol"] == "pg_lstar_entry"
        assert finding["evidence"]["module"] == "pg_lstar"
        assert (
            finding["evidence"]["value"] == guest["lstar"]["symbols"]["pg_lstar_entry"].split()[0]
        )
    assert findings(guest, "scan_lstar_after") == []


def _hooks(guest: Results, step: str) -> list[dict[str, object]]:
    return records(guest, step, "netfilter", "NetfilterHook")


def test_netfilter_hooks_are_read_and_named(guest: Results) -> None:
    views = records(guest, "scan_nf_hook", "netfilter", "NetfilterViews")[0]
    assert views["hook_lists_from"] == "kernel memory"
    assert "CONFIG_NETFILTER_NETLINK_HOOK" in views["dump_unavailable"]
    hooks = _hooks(guest, "scan_nf_hook")
    mine = [h for h in hooks if h["function"] == "pg_nf_input"]
    assert [(h["family"], h["hook"], h["module"]) for h in mine] == [
        ("ipv4", "input", "pg_nf_hook")
    ]
    assert mine[0]["priority"] == -(2**31) + 7  # NF_IP_PRI_FIRST + 7
    chains = {(h["family"], h["hook"]) for h in hooks if h["hook_type"] == "nftables"}
    assert {("ipv4", "output"), ("ipv6", "output")} <= chains  # the inet chain, both families
    assert findings(guest, "scan_nf_hook") == []


def test_hook_of_a_hidden_module_is_tampering(guest: Results) -> None:
    address = int(guest["nf_views"]["symbols"]["pg_nf_input"].split()[0], 16)
    finding = one(guest, "scan_nf_hidden", technique="hidden-netfilter-hook")
    assert finding["severity"] == "critical" and finding["disposition"] == "tampering"
    # reloaded at the same place or not, the address is bare: no listed module holds it
    assert finding["evidence"]["function"].startswith("0x")
    assert finding["evidence"]["hook"] == "input" and finding["evidence"]["family"] == "ipv4"
    assert int(finding["evidence"]["function"], 16) >> 32 == address >> 32
    memory = one(guest, "scan_nf_hidden", technique="hidden-module")
    assert memory["severity"] == "high" and memory["subject"] == "module memory"
    # kptr_restrict 0 hashes vmallocinfo: the area is placed by the listed modules' bases, and
    # the hook's function lies in it (the module's text comes first in its area on 6.1)
    evidence = memory["evidence"]
    assert evidence["addresses_real"] is False and evidence["settled"] and evidence["second_look"]
    (area,) = evidence["unaccounted"]
    start, end = (int(a, 16) for a in area.split("-"))
    assert start == int(finding["evidence"]["function"], 16) < end
    assert area in memory["summary"]


GUARD_CONFIG = """\
[guard]
baseline = ""
ledger = ""
spool = "/results/spool"
sweep_mean = 600
[responses]
critical = ["log", "bugcheck"]
[bugcheck]
dry_run = false
"""


@pytest.fixture(scope="module")
def bugcheck(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A second boot: the guard runs with a real bugcheck response, and pg_lstar gives it a
    critical finding. The guest must panic once the report is on disk (the host's /results
    share: the guest's own disk is a throwaway snapshot)."""
    results = tmp_path_factory.mktemp("bugcheck")
    (results / "guard.toml").write_text(GUARD_CONFIG)
    command = "modprobe msr && insmod /results/pg_lstar.ko && "
    command += "exec python3 -m patchguard.cli guard --config /results/guard.toml"
    run = run_lab(results, ["pg_lstar"], ["sh", "-c", command], timeout=300, kaslr=False)
    return run, results


def test_bugcheck_panics_the_guest_after_writing_the_report(
    bugcheck: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    run, results = bugcheck
    assert run.returncode != 0, "the guest finished its command: no panic"
    assert "sysrq: Trigger a crash" in run.stderr, run.stderr[-3000:]
    assert "Kernel panic - not syncing: sysrq triggered crash" in run.stderr
    report = json.loads((results / "bugcheck-report.json").read_text())
    assert report["dry_run"] is False
    hijacks = [f for f in report["findings"] if f["technique"] == "syscall-entry-hijack"]
    assert hijacks and all(f["evidence"]["module"] == "pg_lstar" for f in hijacks)
    assert '"technique": "syscall-entry-hijack"' in run.stdout  # logged before the panic
