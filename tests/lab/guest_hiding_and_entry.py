"""Run INSIDE the lab guest (by test_lab_hiding_and_entry.py through lab/run): test rootkits that
hide a process, hijack the syscall entry or hook netfilter, and what patchguard says about them,
as one JSON document written to <results>/guest_hiding_and_entry.json (argv[1], default
/results, where the host put the .ko files).

Steps: start a victim process; scan processes, netfilter and entry (clean); pg_hide_pid hides
the victim from getdents64: record the views and scan processes and tracing; rmmod, scan
again. `modprobe msr`; pg_lstar points MSR_LSTAR at its trampoline: read the MSR on every CPU,
scan entry; rmmod, scan again. An nftables chain (so a legitimate hook is in the lists), then
pg_nf_hook: scan netfilter; rmmod; pg_nf_hook hide=1 (it stays: it cannot be unloaded), scan
netfilter and modules."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params, pg_symbols

MSR_LSTAR = 0xC0000082
steps = Steps(
    "guest_hiding_and_entry",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-rootkits3"),
)
victim = subprocess.Popen(["sleep", "600"])


def scan(*surfaces: str) -> dict[str, Any]:
    return steps.patchguard("scan", "--json", *(a for s in surfaces for a in ("--surface", s)))


def pid_views() -> dict[str, Any]:
    """How the victim shows after pg_hide_pid: listed, answering kill(0), stat-able."""
    pid = victim.pid
    os.kill(pid, 0)
    return {
        "pid": pid,
        "listed": str(pid) in os.listdir("/proc"),
        "stat": Path(f"/proc/{pid}").exists(),
        "params": module_params("pg_hide_pid"),
        "enabled_functions": [
            line
            for line in Path("/sys/kernel/tracing/enabled_functions").read_text().splitlines()
            if "getdents64" in line
        ],
    }


def lstar() -> dict[str, Any]:
    """MSR_LSTAR of every CPU, and where kallsyms puts entry_SYSCALL_64 and the trampoline."""
    values = {}
    for cpu in sorted(Path("/dev/cpu").iterdir()):
        if (cpu / "msr").exists():
            fd = os.open(cpu / "msr", os.O_RDONLY)
            try:
                values[cpu.name] = hex(struct.unpack("<Q", os.pread(fd, 8, MSR_LSTAR))[0])
            finally:
                os.close(fd)
    entry = next(
        line.split()[0]
        for line in Path("/proc/kallsyms").read_text().splitlines()
        if line.endswith(" entry_SYSCALL_64")
    )
    return {"cpus": values, "entry_SYSCALL_64": f"0x{entry}", "symbols": pg_symbols()}


def nft_chain() -> dict[str, Any]:
    """A legitimate nftables base chain: its hook must be named, not flagged."""
    done = steps.run(
        "nft",
        "add table inet pg_lab; add chain inet pg_lab out { type filter hook output priority 0; }",
    )
    return {**done, "ruleset": steps.run("nft", "list ruleset")["stdout"]}


def loopback_packets(count: int = 3) -> int:
    """UDP datagrams to 127.0.0.1: each one passes the ipv4 input hook."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        for _ in range(count):
            tx.sendto(b"pg", rx.getsockname())
            rx.recv(16)
    return count


def nf_views() -> dict[str, Any]:
    return {
        "proc_modules": "pg_nf_hook" in Path("/proc/modules").read_text(),
        "symbols": pg_symbols(),
        "params": module_params("pg_nf_hook") if Path("/sys/module/pg_nf_hook").exists() else {},
    }


step = steps.step
step("victim", lambda: victim.pid)
step("scan_before", lambda: scan("processes", "netfilter", "entry"))
step("insmod_hide_pid", lambda: steps.insmod("pg_hide_pid", f"pid={victim.pid}"))
step("pid_views", pid_views)
step("scan_hidden_pid", lambda: scan("processes", "tracing"))
step("rmmod_hide_pid", lambda: steps.run("rmmod", "pg_hide_pid"))
step("scan_pid_back", lambda: scan("processes"))
step("modprobe_msr", lambda: steps.run("modprobe", "msr"))
step("insmod_lstar", lambda: steps.insmod("pg_lstar"))
step("lstar", lstar)
step("scan_lstar", lambda: scan("entry"))
step("rmmod_lstar", lambda: steps.run("rmmod", "pg_lstar"))
step("lstar_after", lstar)
step("scan_lstar_after", lambda: scan("entry"))
step("nft_chain", nft_chain)
step("insmod_nf_hook", lambda: steps.insmod("pg_nf_hook"))
step("packets", loopback_packets)
step("nf_views", nf_views)
step("scan_nf_hook", lambda: scan("netfilter"))
step("rmmod_nf_hook", lambda: steps.run("rmmod", "pg_nf_hook"))
step("insmod_nf_hidden", lambda: steps.insmod("pg_nf_hook", "hide=1"))
step("nf_hidden_views", nf_views)
step("scan_nf_hidden", lambda: scan("netfilter", "modules"))
step("kernel_log", lambda: steps.kernel_log("ftrace", "netfilter"))
victim.kill()
victim.wait()
steps.finish()
