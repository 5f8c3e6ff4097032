"""The fleet as a whole: the ledger distributed and verified by hosts, two server processes on
one PostgreSQL, a server killed with SIGKILL during a burst, the `patchguard enrol` and
`patchguard report` commands (a real scan), and the migrations."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fleet_support import (
    HostSide,
    ServerProcess,
    count,
    enrolled_host,
    make_token,
    operator,
)
from sqlalchemy import select, text, update

from patchguard.fleet import client
from patchguard.fleet.client import FleetError
from patchguard.fleet.policy import apply_policy
from patchguard.fleet.wire import Message, check_document, envelope
from patchguard.policy import exceptions as ops
from patchguard.server.db import Alert, FindingRow, Report, engine, session_factory, utcnow
from patchguard.signing import HostKey

FINDING = {
    "surface": "kernel_text",
    "technique": "inline-hook",
    "severity": "critical",
    "subject": "do_sys_openat2+0x0",
    "summary": "a jump to module memory was written over the first bytes of the function",
    "disposition": "tampering",
    "evidence": {"bytes": "e9 00 00 00 00", "target": "0xffffffffc0a00000"},
}


def server_cli(db_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "patchguard.cli", "server", *argv, "--db", db_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def make_ledger(tmp_path: Path) -> tuple[Path, HostKey]:
    root = HostKey.load_or_create(tmp_path / "root.key")
    path = tmp_path / "ledger.db"
    ops.init_ledger(path, root, "Fleet Owner")
    ops.set_max_expiry(path, root, 90)
    return path, root


def test_hosts_apply_only_a_ledger_that_verifies_to_their_root(
    server: ServerProcess, tmp_path: Path
) -> None:
    ledger, root = make_ledger(tmp_path)
    done = server_cli(server.db_url, "ledger", "import", str(ledger))
    assert done.returncode == 0 and "2 new entries" in done.stdout, done.stderr
    host = enrolled_host(server, tmp_path)
    applied = apply_policy(host.directory, client.fetch_policy(host.directory), root.fingerprint())
    assert (applied.entries, applied.new) == (2, 2)

    ops.set_max_expiry(ledger, root, 30)
    assert (
        "1 new entries, the server holds 3"
        in server_cli(server.db_url, "ledger", "import", str(ledger)).stdout
    )
    applied = apply_policy(host.directory, client.fetch_policy(host.directory), root.fingerprint())
    assert (applied.entries, applied.new) == (3, 1)

    stranger = HostKey.generate().fingerprint()
    with pytest.raises(FleetError, match=f"not root {stranger}"):
        apply_policy(host.directory, client.fetch_policy(host.directory), stranger)
    other, _ = make_ledger(tmp_path / "other")
    refused = server_cli(server.db_url, "ledger", "import", str(other))
    assert refused.returncode == 2 and "a rewritten ledger" in refused.stderr

    bound = engine(server.db_url)
    with bound.begin() as connection:  # someone with the database edits an entry
        connection.execute(text("UPDATE ledger_entries SET payload = '{}' WHERE seq = 3"))
    with pytest.raises(FleetError, match="does not verify: entry 3"):
        apply_policy(host.directory, client.fetch_policy(host.directory), root.fingerprint())
    with bound.begin() as connection:  # or drops it
        connection.execute(text("DELETE FROM ledger_entries WHERE seq = 3"))
    bound.dispose()
    with pytest.raises(FleetError, match="fewer than the applied 3"):
        apply_policy(host.directory, client.fetch_policy(host.directory), root.fingerprint())


def test_a_policy_not_signed_by_the_pinned_server_key_is_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    from patchguard.fleet.wire import signed_document

    host = enrolled_host(server, tmp_path)
    pinned = bytes.fromhex(client.Enrolment.load(host.directory).server_key)
    genuine = client.request(f"{server.url}/api/v1/policy").data
    assert check_document(genuine, pinned)["format"] == "patchguard.ledger/1"
    forged = signed_document(genuine["document"], HostKey.generate())
    with pytest.raises(ValueError, match="not the pinned server key"):
        check_document(forged, pinned)
    altered = {**genuine, "document": {**genuine["document"], "entries": [{"seq": 1}]}}
    with pytest.raises(ValueError, match="does not verify"):
        check_document(altered, pinned)


def test_two_servers_on_one_postgresql_serve_the_same_fleet(
    pg_url: str, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    first = ServerProcess(pg_url, tmp_path, missed=2, silence_check=0.2).start()
    servers.append(first)
    second = ServerProcess(pg_url, tmp_path, missed=2, silence_check=0.2).start()
    servers.append(second)
    hosts = [enrolled_host(first, tmp_path, f"h{i}") for i in range(4)]

    def send(host: HostSide) -> None:
        for n in range(30):  # each message to one server or the other, in order
            client.queue(host.directory, host.key, "report", {"findings": [FINDING]})
            assert client.deliver(host.directory, (first, second)[n % 2].url).sent == 1

    threads = [threading.Thread(target=send, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert count(pg_url, Report) == 120 and count(pg_url, FindingRow) == 120
    token = make_token(pg_url, "operator")
    seen = [operator(f"{s.url}/api/v1/hosts", token)[1]["hosts"] for s in (first, second)]
    assert seen[0] == seen[1] and {h["last_seq"] for h in seen[0]} == {30}

    # a resend to the other server is the same report; an old one is a replay on both
    resent = hosts[0].directory / "resend"
    client.queue(hosts[0].directory, hosts[0].key, "heartbeat", {"interval": 1})
    [pending] = client.spool_of(hosts[0].directory).pending()
    resent.write_bytes(pending.read_bytes())
    assert client.deliver(hosts[0].directory, first.url).sent == 1
    answers = [client.request(f"{s.url}/api/v1/reports", resent.read_bytes()) for s in servers]
    assert [a.data["duplicate"] for a in answers] == [True, True]

    # both servers watch for silence; host 0 went quiet after a 1 s heartbeat: one alert
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and count(pg_url, Alert) == 0:
        time.sleep(0.2)
    time.sleep(1.0)
    assert count(pg_url, Alert) == 1


def _burst(server: ServerProcess, hosts: list[HostSide], per_host: int) -> None:
    for host in hosts:
        for _ in range(per_host):
            payload = {"findings": [FINDING, FINDING], "gaps": 1}
            client.queue(host.directory, host.key, "report", payload)


def _answered(hosts: list[HostSide], per_host: int) -> int:
    """Messages the server has answered: gone from their hosts' spools."""
    return sum(per_host - len(client.spool_of(h.directory).pending()) for h in hosts)


def test_kill_9_during_a_burst_loses_nothing_and_stores_nothing_twice(
    server: ServerProcess, tmp_path: Path
) -> None:
    per_host = 640  # ten batches a host (client.BATCH): the burst outlasts its first commit
    hosts = [enrolled_host(server, tmp_path, f"h{i}") for i in range(3)]
    server.stop()  # the hosts spool while the server is down
    _burst(server, hosts, per_host)
    for host in hosts:
        done = client.deliver(host.directory)
        assert done.sent == 0 and done.pending == per_host and done.unreachable
    server.start()
    threads = [threading.Thread(target=client.deliver, args=(h.directory,)) for h in hosts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    # Watched from the spools, not the database: a reader can wait out a whole batch's commit.
    while _answered(hosts, per_host) == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    server.kill()  # SIGKILL at the first answer: batches in flight, some committed unanswered
    for thread in threads:
        thread.join()
    stored_at_kill = count(server.db_url, Report)
    assert 0 < stored_at_kill < 3 * per_host, "the kill did not land during the burst"

    server.start()
    for host in hosts:
        done = client.deliver(host.directory)
        assert done.pending == 0 and done.rejected == () and done.unreachable is None
    assert count(server.db_url, Report) == 3 * per_host
    assert count(server.db_url, FindingRow) == 2 * 3 * per_host
    bound = engine(server.db_url)
    with session_factory(bound)() as session:
        seqs = session.execute(select(Report.host_id, Report.seq)).all()
    bound.dispose()
    by_host: dict[int, list[int]] = {}
    for host_id, seq in seqs:
        by_host.setdefault(host_id, []).append(seq)
    assert all(sorted(s) == list(range(1, per_host + 1)) for s in by_host.values())


def patchguard(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "patchguard.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(os.geteuid() != 0, reason="a full scan reads root-only kernel surfaces")
def test_enrol_and_report_commands_spool_while_the_server_is_down(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = {**os.environ, "PATCHGUARD_KEY": str(tmp_path / "host.key")}
    env["PATCHGUARD_STATE_DIR"] = str(tmp_path / "state")
    env["PATCHGUARD_BASELINE"] = str(tmp_path / "no-baseline.zip")
    env["PATCHGUARD_LEDGER"] = str(tmp_path / "no-ledger.db")
    token = make_token(server.db_url, "enrol")
    enrolled = patchguard("enrol", server.url, "--token", token, "--name", "db-7", env=env)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "enrolled host" in enrolled.stdout

    reported = patchguard("report", env=env)
    assert reported.returncode == 0, reported.stderr
    assert "check skipped" in reported.stderr and "1 sent, 0 waiting" in reported.stdout
    bound = engine(server.db_url)
    with session_factory(bound)() as session:
        [stored] = session.scalars(select(Report)).all()
    assert stored.kind == "report" and '"boot_id":' in stored.body

    server.stop()
    waiting = patchguard("report", "--heartbeat", "30", env=env)
    assert waiting.returncode == 0 and "1 message(s) spooled" in waiting.stderr
    server.start()
    stopped = patchguard("report", "--stop", "maintenance", env=env)
    assert "2 sent, 0 waiting" in stopped.stdout, stopped.stderr
    with session_factory(bound)() as session:
        kinds = session.scalars(select(Report.kind).order_by(Report.id)).all()
    bound.dispose()
    assert kinds == ["report", "heartbeat", "stop"]
    token = make_token(server.db_url, "operator")
    [host] = operator(f"{server.url}/api/v1/hosts", token)[1]["hosts"]
    assert host["name"] == "db-7" and host["status"] == "stopped"


def test_migrations_are_idempotent_and_match_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from patchguard.server.db import Base

    for _ in range(2):
        done = server_cli(db_url, "migrate")
        assert done.returncode == 0 and "newest schema" in done.stdout, done.stderr
    bound = engine(db_url)
    with bound.connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, Base.metadata) == []
    bound.dispose()


def test_server_commands_fail_in_one_line(tmp_path: Path) -> None:
    bad = server_cli("postgresql+psycopg://nobody@/none?host=/nonexistent", "migrate")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("patchguard: database postgresql+psycopg://")
    url = f"sqlite:///{tmp_path / 's.db'}"
    expiry = server_cli(url, "token", "create", "--role", "enrol", "--expires", "soon")
    assert expiry.returncode == 2 and "--expires: 'soon'" in expiry.stderr
    missing = server_cli(url, "ledger", "import", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no ledger here" in missing.stderr


def test_prune_deletes_old_reports_and_keeps_the_sequence(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    for _ in range(3):
        client.queue(host.directory, host.key, "report", {"findings": [FINDING]})
    client.deliver(host.directory)
    bound = engine(server.db_url)
    with bound.begin() as connection:  # the first two are 40 days old
        old = utcnow() - timedelta(days=40)
        connection.execute(update(Report).where(Report.seq < 3).values(received_at=old))
    bound.dispose()
    done = server_cli(server.db_url, "prune", "--days", "30")
    assert done.stdout == "deleted 2 reports and 2 findings older than 30 days\n", done.stderr
    assert count(server.db_url, Report) == 1 and count(server.db_url, FindingRow) == 1
    replay = client.request(
        f"{server.url}/api/v1/reports",
        envelope(Message(host.fingerprint, 1, "report"), host.key),
    )
    assert replay.status == 409


def test_fetch_policy_command_applies_the_ledger_to_the_pinned_root(
    server: ServerProcess, tmp_path: Path
) -> None:
    ledger, root = make_ledger(tmp_path)
    assert server_cli(server.db_url, "ledger", "import", str(ledger)).returncode == 0
    env = {**os.environ, "PATCHGUARD_KEY": str(tmp_path / "host.key")}
    env["PATCHGUARD_STATE_DIR"] = str(tmp_path / "state")
    token = make_token(server.db_url, "enrol")
    enrol = ["enrol", server.url, "--token", token, "--ledger-root", root.fingerprint()]
    assert patchguard(*enrol, env=env).returncode == 0
    fetched = patchguard("fetch-policy", env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert f"ledger verified to root {root.fingerprint()}: 2 entries (2 new)" in fetched.stdout
    assert (tmp_path / "state" / "fleet-ledger.json").exists()
    other = HostKey.generate().fingerprint()
    refused = patchguard("fetch-policy", "--root", other, env=env)
    assert refused.returncode == 2 and f"not root {other}" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_fetch_policy_takes_the_root_the_signed_guard_config_pins(
    server: ServerProcess, tmp_path: Path
) -> None:
    ledger, root = make_ledger(tmp_path)
    assert server_cli(server.db_url, "ledger", "import", str(ledger)).returncode == 0
    env = {**os.environ, "PATCHGUARD_KEY": str(tmp_path / "host.key")}
    env["PATCHGUARD_STATE_DIR"] = str(tmp_path / "state")
    token = make_token(server.db_url, "enrol")
    assert patchguard("enrol", server.url, "--token", token, env=env).returncode == 0
    config = tmp_path / "guard.toml"

    def pin(fingerprint: str) -> None:
        config.write_text(
            f'[guard]\nbaseline = ""\nledger = ""\nkey = "{tmp_path / "host.key"}"\n'
            f'ledger_root = "{fingerprint}"\n'
        )

    pin(root.fingerprint())
    unsigned = patchguard("fetch-policy", "--config", str(config), env=env)
    assert unsigned.returncode == 2 and "cannot be trusted" in unsigned.stderr, unsigned.stderr
    signed = patchguard("config", "sign", str(config), env=env)
    assert signed.returncode == 0, signed.stderr
    fetched = patchguard("fetch-policy", "--config", str(config), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert f"ledger verified to root {root.fingerprint()}" in fetched.stdout
    pin(HostKey.generate().fingerprint())  # edited after signing: not trusted
    edited = patchguard("fetch-policy", "--config", str(config), env=env)
    assert edited.returncode == 2 and edited.stderr.count("\n") == 1, edited.stderr
