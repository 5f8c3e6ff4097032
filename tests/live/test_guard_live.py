"""`patchguard guard` on the running kernel: a new hook is alerted within the bound, `contain`
detaches what can be detached, and an alert made while the webhook is down is spooled and
delivered once when it is back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp
from support.guard_process import Guard
from support.receiver import Receiver

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


class GuardProcess(Guard):
    """The guard process of support.guard_process, with the stop these tests want: SIGTERM,
    and a guard that does not stop is sent SIGABRT so faulthandler prints every thread."""

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait()
            time.sleep(0.5)  # the rest of its stderr
            pytest.fail("the guard did not stop within 15 s of SIGTERM:\n" + "".join(self.stderr))


def is_prog(prog_id: int) -> Any:
    def match(event: dict[str, Any]) -> bool:
        finding = event.get("finding") or {}
        return bool(finding.get("evidence", {}).get("prog_id") == prog_id)

    return match


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def guard(tmp_path: Path, receiver: Receiver) -> Iterator[GuardProcess]:
    config = tmp_path / "guard.toml"
    config.write_text(f"""
[guard]
baseline = ""
spool = "{tmp_path / "spool"}"
trigger_interval = 1.0
sweep_mean = 600
[responses]
medium = ["log", "alert", "contain"]
high = ["log", "alert"]
[alert]
webhook = "{receiver.url}"
""")
    g = GuardProcess(config)
    try:
        assert g.wait_event(lambda e: e.get("event") == "sweep", 60), "no first sweep"
        yield g
    finally:
        code = g.stop()
        assert code == 0, "".join(g.stderr) or code
        assert g.wait_event(lambda e: e.get("event") == "stop", 5)


def test_new_hook_is_alerted_within_two_seconds(guard: GuardProcess, receiver: Receiver) -> None:
    with bp.attach_raw_tracepoint("sys_enter", "pg_g_raw") as prog:
        attached = time.monotonic()
        alert = receiver.wait_for(is_prog(prog.prog_id), timeout=5)
        latency = time.monotonic() - attached
        assert alert is not None, "no alert for the new program"
        assert alert["finding"]["technique"] == "sensitive-hook"
        assert latency < 2.0, f"alert after {latency:.2f}s"
        # raw_tracepoint links have no detach operation: contain must say so, not pretend
        contained = guard.wait_event(
            lambda e: e.get("event") == "contain" and str(prog.prog_id) in e.get("subject", ""), 5
        )
        assert contained is not None and contained["done"] == []
        assert "LINK_DETACH" in contained["not_done"][0]


def test_contain_detaches_a_link_that_can_be_detached(guard: GuardProcess) -> None:
    with bp.attach_sk_lookup("pg_g_sklookup") as prog:
        contained = guard.wait_event(
            lambda e: e.get("event") == "contain" and str(prog.prog_id) in e.get("subject", ""), 5
        )
        assert contained is not None
        assert any("detached" in d for d in contained["done"]), contained
        from patchguard.kernel.bpf.objects import link_info

        # our own fd keeps the link object; detached, it no longer names a network namespace
        info = link_info(prog.fds[0])
        assert info.prog_id == prog.prog_id and info.target == "netns ino 0"


def test_perf_event_hook_cannot_be_contained_and_says_why(guard: GuardProcess) -> None:
    with bp.attach_tracepoint("syscalls", "sys_enter_kill", "pg_g_tp") as prog:
        contained = guard.wait_event(
            lambda e: e.get("event") == "contain" and str(prog.prog_id) in e.get("subject", ""), 5
        )
    assert contained is not None and contained["done"] == []
    assert "only its holder can detach" in contained["not_done"][0]
    assert f"pid {os.getpid()}" in contained["not_done"][0]


def test_alert_is_spooled_while_the_webhook_is_down(
    guard: GuardProcess, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.stop()
    with bp.attach_tracepoint("syscalls", "sys_enter_kill", "pg_g_spool") as prog:
        logged = guard.wait_event(is_prog(prog.prog_id), timeout=5)
        assert logged is not None, "the finding was not logged"
        deadline = time.monotonic() + 5
        while not list((tmp_path / "spool").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((tmp_path / "spool").glob("*.json")), "the alert was not spooled"
        receiver.start()  # same port
        alert = receiver.wait_for(is_prog(prog.prog_id), timeout=20)
    assert alert is not None, "the spooled alert never arrived"
    time.sleep(1.5)
    assert sum(is_prog(prog.prog_id)(b) for b in receiver.bodies) == 1, "delivered twice"
    assert not list((tmp_path / "spool").glob("*.json"))


def _start(tmp_path: Path, body: str) -> GuardProcess:
    config = tmp_path / "guard.toml"
    config.write_text(f'[guard]\nspool = "{tmp_path / "spool"}"\ntrigger_interval = 0.2\n' + body)
    g = GuardProcess(config)
    assert g.wait_event(lambda e: e.get("event") == "sweep", 60), "no first sweep"
    return g


def test_sighup_reloads_and_a_bad_config_keeps_the_old(tmp_path: Path) -> None:
    g = _start(tmp_path, 'baseline = ""\nsweep_mean = 600\n')
    try:
        config = tmp_path / "guard.toml"
        config.write_text(config.read_text().replace("sweep_mean = 600", "sweep_mean = 500"))
        g.proc.send_signal(signal.SIGHUP)
        assert g.wait_event(lambda e: e.get("event") == "reloaded", 5)
        config.write_text("[guard]\nsweep_mean = -3\n")
        g.proc.send_signal(signal.SIGHUP)
        failed = g.wait_event(lambda e: e.get("event") == "reload-failed", 5)
        assert failed and "guard.sweep_mean: must be more than 0 seconds" in failed["message"]
        assert g.proc.poll() is None, "a bad config must not stop the guard"
    finally:
        assert g.stop() == 0


def test_untrusted_baseline_is_a_critical_finding(tmp_path: Path) -> None:
    (tmp_path / "baseline.zip").write_bytes(b"not a baseline")
    g = _start(
        tmp_path,
        f'baseline = "{tmp_path / "baseline.zip"}"\n'
        f'key = "{tmp_path / "host.key"}"\nsweep_mean = 600\n',
    )
    try:
        found = g.wait_event(
            lambda e: (e.get("finding") or {}).get("technique") == "baseline-untrusted", 10
        )
        assert found is not None and found["finding"]["severity"] == "critical"
    finally:
        assert g.stop() == 0


def test_config_changed_without_reload_is_a_critical_finding(tmp_path: Path) -> None:
    g = _start(tmp_path, 'baseline = ""\nsweep_mean = 1\nsweep_jitter = 0\n')
    try:
        config = tmp_path / "guard.toml"
        config.write_text(config.read_text() + "\n# edited behind the guard's back\n")
        found = g.wait_event(
            lambda e: (e.get("finding") or {}).get("technique") == "config-changed", 10
        )
        assert found is not None and found["finding"]["severity"] == "critical"
    finally:
        assert g.stop() == 0


def test_bugcheck_dry_run_writes_the_report_and_nothing_else(tmp_path: Path) -> None:
    g = _start(
        tmp_path,
        'baseline = ""\nsweep_mean = 600\n[responses]\nmedium = ["log", '
        '"bugcheck"]\n[bugcheck]\ndry_run = true\n',
    )
    try:
        event = g.wait_event(lambda e: e.get("event") == "bugcheck", 10)
        assert event is not None and event["dry_run"] is True
        report = json.loads(Path(event["report"]).read_text())
        assert report["dry_run"] is True and report["findings"]
    finally:
        assert g.stop() == 0


def test_watchdog_and_ready_notifications(tmp_path: Path) -> None:
    import socket

    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(10)
        env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
        config = tmp_path / "guard.toml"
        config.write_text(
            f'[guard]\nbaseline = ""\ntrigger_interval = 0.1\nspool = "{tmp_path / "spool"}"\n'
            f'key = "{tmp_path / "host.key"}"\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "patchguard.cli", "guard", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            env=env,
        )
        try:
            # pings may come before READY: the start and the first sweep make progress
            got = [sock.recv(256).decode()]
            while got[-1] != "READY=1":
                got.append(sock.recv(256).decode())
            assert sock.recv(256).decode() == "WATCHDOG=1"  # and after it, from the loop
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        after = []
        with contextlib.suppress(TimeoutError):
            sock.settimeout(0.5)
            while True:
                after.append(sock.recv(256).decode())
    assert set(got[:-1]) <= {"WATCHDOG=1"}
    assert "STOPPING=1" in after


def test_metrics_endpoint_serves_the_guards_counters(tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = _start(
        tmp_path, f'baseline = ""\nsweep_mean = 600\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        assert g.stop() == 0
    body = text.decode()
    assert "patchguard_sweeps_total 1.0" in body
    assert "patchguard_sweep_duration_seconds_count 1.0" in body
    assert 'patchguard_findings{severity="medium",surface="posture"}' in body
    # the process's memory, as prometheus_client reads it from /proc/self
    resident = [ln for ln in body.splitlines() if ln.startswith("process_resident_memory_bytes ")]
    assert len(resident) == 1 and float(resident[0].split()[1]) > 0


def test_ledger_entries_reach_the_sinks_once(tmp_path: Path, receiver: Receiver) -> None:
    from patchguard.policy import exceptions as ops
    from patchguard.signing import HostKey

    ledger = tmp_path / "ledger.db"
    owner = HostKey.load_or_create(tmp_path / "owner.key")
    ops.init_ledger(ledger, owner, "SRE team")
    g = _start(
        tmp_path,
        f'baseline = ""\nledger = "{ledger}"\nkey = "{tmp_path / "host.key"}"\n'
        f'sweep_mean = 600\n[alert]\nwebhook = "{receiver.url}"\n',
    )
    try:
        first = g.wait_event(lambda e: e.get("event") == "ledger-entry", 5)
        assert first is not None and first["seq"] == 1 and first["kind"] == "policy"
        ops.set_max_expiry(ledger, owner, 90)  # a policy change made while the guard runs
        changed = g.wait_event(lambda e: e.get("event") == "ledger-entry" and e["seq"] == 2, 5)
        assert changed is not None and "90" in changed["message"]
        posted = receiver.wait_for(lambda b: b.get("seq") == 2, timeout=10)
        assert posted is not None and posted["event"] == "ledger-entry"
    finally:
        assert g.stop() == 0
    assert g.wait_event(lambda e: e.get("event") == "stop", 5)  # every line read
    assert sum(e.get("event") == "ledger-entry" for e in g.seen) == 2
    assert (tmp_path / "ledger.db.announced").read_text().split()[0] == "2"  # seq, then hash


def _config_findings(g: GuardProcess) -> list[dict[str, Any]]:
    g.wait_event(lambda e: e.get("event") == "stop", 5)  # every line read
    return [
        e["finding"]
        for e in g.seen
        if (e.get("finding") or {}).get("technique", "").startswith("config-")
    ]


def test_config_signature_is_checked_before_use(tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    body = f'baseline = ""\nledger = ""\nkey = "{key}"\nsweep_mean = 600\n'
    g = _start(tmp_path, body)  # unsigned: it runs, and says so
    assert g.stop() == 0
    unsigned = _config_findings(g)
    assert [(f["technique"], f["severity"]) for f in unsigned] == [("config-unsigned", "medium")]

    config = tmp_path / "guard.toml"
    signed = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "config", "sign", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert signed.returncode == 0, signed.stderr
    g = GuardProcess(config)
    assert g.wait_event(lambda e: e.get("event") == "sweep", 60)
    assert g.stop() == 0
    assert _config_findings(g) == []

    config.write_text(config.read_text().replace("sweep_mean = 600", "sweep_mean = 900"))
    g = GuardProcess(config)  # edited behind the signature, before the guard starts
    assert g.wait_event(lambda e: e.get("event") == "sweep", 60)
    assert g.stop() == 0
    [bad] = _config_findings(g)
    assert bad["technique"] == "config-signature-invalid" and bad["severity"] == "critical"
    assert "changed since it was signed" in bad["summary"]
