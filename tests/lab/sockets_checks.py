"""Run INSIDE the lab guest (by test_lab_sockets.py through lab/run): a socket hidden from
/proc/net/tcp by a test rootkit and what patchguard's sockets surface says about it, as one
JSON document written to <results>/sockets_checks.json (argv[1], default /results, where the
host put the .ko files).

Steps: a child process listens on 127.0.0.1:PORT, another holds a TCP socket only bound; scan
sockets (clean), then collect with every port probed (the bound-only socket's port must be
explained by its holder, not reported); pg_hide_sock hides
the port from tcp4_seq_show: record whether /proc/net/tcp and `ss` (sock_diag) list it, scan
sockets; rmmod, record and scan again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from guest_steps import Steps, module_params

PORT = 4444
LISTEN = f"""
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", {PORT}))
s.listen()
print("ready", flush=True)
time.sleep(600)
"""
BOUND_PORT = 4445
BOUND_ONLY = f"""
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", {BOUND_PORT}))
print("ready", flush=True)
time.sleep(600)
"""
# Every port probed (probe mode "all", which the CLI does not offer): 6.1's sock_diag cannot
# dump a TCP socket only bound, so its port is a suspect only its holder explains.
PROBE_ALL = """
import json
from patchguard.kernel import Kernel
from patchguard.surfaces.sockets import SocketsSurface
surface = SocketsSurface("all")
state = surface.collect(Kernel())
print(json.dumps({
    "findings": [f.subject for f in surface.assess(state)],
    "views": [
        {"probed_ports": r.probed_ports, "ports_in_use": r.ports_in_use, "suspects": r.suspects}
        for r in state.records if type(r).__name__ == "NetnsViews"
    ],
    "gaps": [f"{g.what}: {g.reason}" for g in state.gaps],
}))
"""
steps = Steps(
    "sockets_checks",
    Path(sys.argv[1] if len(sys.argv) > 1 else "/results"),
    Path("/tmp/patchguard-sockets"),
)
listener = subprocess.Popen([sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
bound = subprocess.Popen([sys.executable, "-c", BOUND_ONLY], stdout=subprocess.PIPE, text=True)


def ready() -> int:
    for child in (listener, bound):
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return listener.pid


def probe_all() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", PROBE_ALL], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def views() -> dict[str, Any]:
    """Whether each listing shows the listener: /proc/net/tcp (tcp4_seq_show) and ss (sock_diag)."""
    tcp = Path("/proc/net/tcp").read_text().splitlines()[1:]
    ss = steps.run("ss", "-Hltn", f"sport = :{PORT}")
    loaded = Path("/sys/module/pg_hide_sock").exists()
    return {
        "proc_net_tcp": any(line.split()[1].endswith(f":{PORT:04X}") for line in tcp),
        "ss": f":{PORT}" in ss["stdout"],
        "params": module_params("pg_hide_sock") if loaded else {},
    }


def scan() -> dict[str, Any]:
    return steps.patchguard("scan", "--json", "--surface", "sockets")


step = steps.step
step("listener", ready)
step("views_before", views)
step("scan_before", scan)
step("probe_all", probe_all)
step("insmod_hide_sock", lambda: steps.insmod("pg_hide_sock", f"port={PORT}"))
step("views_hidden", views)
step("scan_hidden", scan)
step("rmmod_hide_sock", lambda: steps.run("rmmod", "pg_hide_sock"))
step("views_after", views)
step("scan_after", scan)
step("kernel_log", lambda: steps.kernel_log("ftrace"))
for child in (listener, bound):
    child.kill()
    child.wait()
steps.finish()
