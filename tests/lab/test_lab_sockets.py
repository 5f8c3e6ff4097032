"""The sockets cross-view against a real socket-hiding rootkit, in one guest boot:
sockets_checks.py runs patchguard and records what it said; it is asserted here.

pg_hide_sock: an ftrace IPMODIFY hook on tcp4_seq_show that leaves one local port's IPv4 TCP
sockets out of /proc/net/tcp (netstat's source). sock_diag (ss), the BPF socket iterators
(Debian's 6.1 has bpf_iter_tcp; its struct sock has no cached inode, so the program takes the
socket_alloc path) and the bind hash (the second look probes the suspect's port) still have
the listener: the cross-view must name it, with port, protocol, namespace, owner, and proc_net
as the view that hid it. Debian's 6.1 builds raw_diag as a module, so there raw sockets are
compared too, and the scan has no gap at all.
"""

from __future__ import annotations

import pytest
from support.lab_guest import Results, findings, one, records, report, run_script

pytestmark = pytest.mark.lab

MODULES = ("pg_hide_sock",)
PORT = 4444


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return run_script(tmp_path_factory.mktemp("sockets"), "sockets_checks.py", MODULES, kaslr=False)


def test_the_rootkit_loads_and_hides_the_socket(guest: Results) -> None:
    assert guest["insmod_hide_sock"]["rc"] == 0, guest["insmod_hide_sock"]["stderr"]
    assert guest["views_before"]["proc_net_tcp"] and guest["views_before"]["ss"]
    hidden = guest["views_hidden"]
    assert not hidden["proc_net_tcp"] and hidden["ss"]  # gone from netstat's file, not from ss
    assert int(hidden["params"]["hidden"]) > 0
    assert guest["views_after"]["proc_net_tcp"]


def test_clean_guest_hides_no_socket(guest: Results) -> None:
    assert findings(guest, "scan_before") == []
    assert report(guest, "scan_before")["unavailable"] == []
    (views,) = records(guest, "scan_before", "sockets", "NetnsViews")
    assert views["proc_net"] == views["sock_diag"] == views["bpf_sock_iter"]
    listeners = records(guest, "scan_before", "sockets", "Listener")
    (ours,) = [r for r in listeners if r["local"] == f"127.0.0.1:{PORT}"]
    assert [o["pid"] for o in ours["owners"]] == [guest["listener"]]


def test_a_port_only_bound_is_explained_by_its_holder(guest: Results) -> None:
    """6.1's sock_diag cannot dump a TCP socket only bound: with every port probed, its port
    is in use and unlisted, a suspect twice; its holder (pidfd_getfd) explains it."""
    done = guest["probe_all"]
    assert done["findings"] == [], done
    (views,) = done["views"]
    assert views["probed_ports"] == 2 * 65535 and views["ports_in_use"] >= 2
    assert views["suspects"] >= 1  # the bound-only port


def test_hidden_socket_is_named_by_the_cross_view(guest: Results) -> None:
    finding = one(guest, "scan_hidden", technique="hidden-socket")
    assert (finding["severity"], finding["disposition"]) == ("high", "tampering")
    evidence = finding["evidence"]
    assert (evidence["protocol"], evidence["port"], evidence["state"]) == ("tcp", PORT, "LISTEN")
    assert evidence["missing_from"] == ["proc_net"]
    # The second look probes the suspect's port: its bind is refused too.
    assert evidence["seen_by"] == ["sock_diag", "bpf_sock_iter", "bind_probe"]
    assert evidence["owner_pids"] == [guest["listener"]]
    assert f"pid {guest['listener']}" in finding["summary"]
    assert "proc_net" in finding["summary"] and f"127.0.0.1:{PORT}" in finding["subject"]


def test_the_socket_is_back_after_rmmod(guest: Results) -> None:
    assert findings(guest, "scan_after") == []
    assert guest["kernel_log"] and not [line for line in guest["kernel_log"] if "BUG" in line]
