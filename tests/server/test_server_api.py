"""The fleet server's API end to end, on SQLite and on PostgreSQL: a real server process,
real host keys, and the host-side code that enrols, spools and sends."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

from fleet_support import (
    ServerProcess,
    call,
    count,
    enrolled_host,
    make_token,
    new_host,
    operator,
)

from patchguard.fleet import client
from patchguard.fleet.wire import Message, envelope
from patchguard.server.db import Alert, FindingRow, Host, Report, utcnow

FINDING = {
    "surface": "ebpf",
    "technique": "rootkit-helper",
    "severity": "high",
    "subject": "prog 42 (kill_hook)",
    "summary": "a kprobe program calls bpf_override_return",
    "disposition": "suspicious",
    "attack_id": "T1014",
    "evidence": {"prog_id": 42, "helpers": ["bpf_override_return"]},
}
DIGEST_A, DIGEST_B, DIGEST_C = "a" * 64, "b" * 64, "c" * 64


def post_report(server: ServerProcess, body: bytes) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    return call(f"{server.url}/api/v1/reports", body, headers)


def test_enrol_report_and_read_back(server: ServerProcess, tmp_path: Path) -> None:
    host = enrolled_host(server, tmp_path)
    pinned = client.Enrolment.load(host.directory)
    assert pinned.host == host.fingerprint and len(bytes.fromhex(pinned.server_key)) == 32
    payload = {"findings": [FINDING], "gaps": 2}
    assert client.queue(host.directory, host.key, "report", payload) == 1
    done = client.deliver(host.directory)
    assert (done.sent, done.pending, done.rejected, done.unreachable) == (1, 0, (), None)

    token = make_token(server.db_url, "operator")
    status, listed = operator(f"{server.url}/api/v1/hosts", token)
    assert status == 200
    [shown] = listed["hosts"]
    assert shown["fingerprint"] == host.fingerprint and shown["status"] == "active"
    assert shown["last_seq"] == 1 and shown["last_report_at"] is not None
    assert shown["last_clean_sweep_at"] is None  # a high finding is not a clean sweep
    status, detail = operator(f"{server.url}/api/v1/hosts/{host.fingerprint}", token)
    [finding] = detail["findings"]
    assert finding["technique"] == "rootkit-helper" and finding["evidence"]["prog_id"] == 42

    again = client.queue(host.directory, host.key, "report", {"findings": [], "gaps": 0})
    client.deliver(host.directory)
    status, detail = operator(f"{server.url}/api/v1/hosts/{host.fingerprint}", token)
    assert again == 2 and detail["last_clean_sweep_at"] is not None
    assert count(server.db_url, Report) == 2 and count(server.db_url, FindingRow) == 1


def test_enrol_again_with_the_same_key_spends_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = new_host(tmp_path)
    token = make_token(server.db_url, "enrol", uses=1)
    client.enrol(server.url, token, host.key, "web-1", host.directory)
    client.enrol(server.url, token, host.key, "web-1", host.directory)  # a lost answer, retried
    other = new_host(tmp_path, "other")
    try:
        client.enrol(server.url, token, other.key, "web-2", other.directory)
    except client.FleetError as exc:
        assert "403" in str(exc) and "used up" in str(exc)
    else:
        raise AssertionError("a used enrol token enrolled a second host")
    assert count(server.db_url, Host) == 1


def test_enrol_tokens_expire_and_only_enrol(server: ServerProcess, tmp_path: Path) -> None:
    host = new_host(tmp_path)
    expired = make_token(server.db_url, "enrol", expires_at=utcnow() - timedelta(seconds=1))
    refusals = []
    for token in (expired, make_token(server.db_url, "operator"), "pgt_" + "x" * 43, "nonsense"):
        try:
            client.enrol(server.url, token, host.key, "h", host.directory)
        except client.FleetError as exc:
            refusals.append(str(exc))
    assert len(refusals) == 4
    assert "(403): the token expired" in refusals[0]
    assert "(403): this is an operator token" in refusals[1]
    assert "(401): unknown token" in refusals[2]
    assert "(401): the Authorization header is not a patchguard bearer token" in refusals[3]
    assert count(server.db_url, Host) == 0


def test_operator_api_needs_an_operator_token(server: ServerProcess) -> None:
    enrol = make_token(server.db_url, "enrol", uses=5)
    for path in ("/api/v1/hosts", "/api/v1/alerts", "/api/v1/hosts/0123456789abcdef"):
        assert call(f"{server.url}{path}")[0] == 401
        assert operator(f"{server.url}{path}", enrol)[0] == 403
    status, answer = operator(f"{server.url}/api/v1/hosts/0123456789abcdef/revoke", enrol, b"{}")
    assert status == 403 and "operator" in str(answer["error"])


def test_resend_is_stored_once_and_replays_are_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    first = envelope(Message(host.fingerprint, 1, "report", {"findings": [FINDING]}), host.key)
    assert post_report(server, first) == (200, {"stored": True, "duplicate": False, "seq": 1})
    assert post_report(server, first) == (200, {"stored": False, "duplicate": True, "seq": 1})
    same_seq = envelope(Message(host.fingerprint, 1, "heartbeat", {"interval": 5}), host.key)
    status, answer = post_report(server, same_seq)
    assert status == 409 and "replay" in str(answer["error"])
    second = envelope(Message(host.fingerprint, 3, "heartbeat", {"interval": 5}), host.key)
    assert post_report(server, second)[0] == 200
    lower = envelope(Message(host.fingerprint, 2, "heartbeat", {"interval": 5}), host.key)
    status, answer = post_report(server, lower)
    assert status == 409 and answer["error"] == (
        "sequence 2 is not after 3: a replay or a regression"
    )
    assert count(server.db_url, Report) == 2 and count(server.db_url, FindingRow) == 1
    assert "refused POST /api/v1/reports from 127.0.0.1: 409" in server.log.read_text()


def test_an_id_another_host_used_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    first, second = enrolled_host(server, tmp_path, "a"), enrolled_host(server, tmp_path, "b")
    taken = Message(first.fingerprint, 1, "report", id="ab" * 16)
    assert post_report(server, envelope(taken, first.key))[0] == 200
    again = Message(second.fingerprint, 1, "report", id="ab" * 16)
    status, answer = post_report(server, envelope(again, second.key))
    assert (
        status == 409
        and answer["error"] == f"report id {'ab' * 16} was already used by another report"
    )
    assert count(server.db_url, Report) == 1


def test_unknown_revoked_and_forged_hosts_are_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    stranger = new_host(tmp_path, "stranger")
    status, answer = post_report(
        server, envelope(Message(stranger.fingerprint, 1, "report"), stranger.key)
    )
    assert (
        status == 403 and answer["error"] == f"unknown host {stranger.fingerprint}: enrol it first"
    )
    forged = envelope(Message(host.fingerprint, 1, "report"), stranger.key)
    status, answer = post_report(server, forged)
    assert status == 401 and "signature does not verify" in str(answer["error"])

    token = make_token(server.db_url, "operator")
    revoke = f"{server.url}/api/v1/hosts/{host.fingerprint}/revoke"
    status, revoked = operator(revoke, token, b"{}")
    assert status == 200 and revoked["status"] == "revoked"
    status, answer = post_report(server, envelope(Message(host.fingerprint, 1, "report"), host.key))
    assert status == 403 and "was revoked" in str(answer["error"])
    try:
        client.enrol(server.url, make_token(server.db_url, "enrol"), host.key, "h", tmp_path / "x")
    except client.FleetError as exc:
        assert "revoked" in str(exc)
    else:
        raise AssertionError("a revoked key enrolled again")
    assert count(server.db_url, Report) == 0


def test_refused_messages_are_set_aside_and_the_rest_delivered(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    client.queue(host.directory, host.key, "heartbeat", {"interval": 30})
    client.queue(host.directory, host.key, "heartbeat", {"interval": 0})  # out of bounds
    client.queue(host.directory, host.key, "heartbeat", {"interval": 30})
    done = client.deliver(host.directory)
    assert done.sent == 2 and done.pending == 0 and len(done.rejected) == 1
    assert "422 body.payload.interval" in done.rejected[0]
    assert len(list((host.directory / "fleet-rejected").glob("*.json"))) == 1


def heartbeat(host_dir: Path, host_key: object, interval: int) -> None:
    from patchguard.signing import HostKey

    assert isinstance(host_key, HostKey)
    client.queue(host_dir, host_key, "heartbeat", {"interval": interval})
    assert client.deliver(host_dir).sent == 1


def wait_for(condition: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_silent_host_is_flagged_and_a_clean_stop_is_not(
    db_url: str, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    server = ServerProcess(db_url, tmp_path, missed=2, silence_check=0.2).start()
    servers.append(server)
    quiet, stopping = (
        enrolled_host(server, tmp_path, "quiet"),
        enrolled_host(server, tmp_path, "stop"),
    )
    heartbeat(quiet.directory, quiet.key, 1)
    heartbeat(stopping.directory, stopping.key, 1)
    client.queue(stopping.directory, stopping.key, "stop", {"reason": "systemctl stop"})
    client.deliver(stopping.directory)
    token = make_token(db_url, "operator")

    def statuses() -> dict[str, str]:
        hosts = operator(f"{server.url}/api/v1/hosts", token)[1]["hosts"]
        return {h["name"]: h["status"] for h in hosts}

    def alerts() -> list[dict[str, object]]:
        found: list[dict[str, object]] = operator(f"{server.url}/api/v1/alerts?open=true", token)[
            1
        ]["alerts"]
        return found

    wait_for(lambda: statuses()["quiet"] == "silent" and alerts())
    time.sleep(0.6)  # several more checks: still one alert
    [alert] = alerts()
    assert alert["kind"] == "silent" and alert["host"] == quiet.fingerprint
    assert statuses() == {"quiet": "silent", "stop": "stopped"}
    assert "is silent: missed 2 heartbeats" in server.log.read_text()

    heartbeat(quiet.directory, quiet.key, 1)  # back: active, alert resolved
    assert statuses()["quiet"] == "active" and alerts() == []
    assert count(db_url, Alert) == 1


def test_changed_baseline_without_rotation_is_a_critical_alert(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    for kind, digest in (
        ("report", DIGEST_A),
        ("report", DIGEST_A),
        ("report", DIGEST_B),  # re-created behind the server's back
        ("baseline-rotated", DIGEST_C),  # an announced rotation
        ("report", DIGEST_C),
    ):
        client.queue(host.directory, host.key, kind, {}, baseline_digest=digest)
    assert client.deliver(host.directory).sent == 5
    token = make_token(server.db_url, "operator")
    [alert] = operator(f"{server.url}/api/v1/alerts", token)[1]["alerts"]
    assert alert["kind"] == "baseline-changed" and alert["severity"] == "critical"
    assert alert["evidence"]["previous_digest"] == DIGEST_A
    assert alert["evidence"]["digest"] == DIGEST_B and alert["evidence"]["seq"] == 3
    detail = operator(f"{server.url}/api/v1/hosts/{host.fingerprint}", token)[1]
    assert detail["baseline_digest"] == DIGEST_C


def test_every_stored_report_verifies_with_the_hosts_key(
    server: ServerProcess, tmp_path: Path
) -> None:
    from sqlalchemy import select

    from patchguard.server.db import engine, session_factory
    from patchguard.signing import verify_signature

    host = enrolled_host(server, tmp_path)
    client.queue(host.directory, host.key, "report", {"findings": [FINDING]})
    client.deliver(host.directory)
    bound = engine(server.db_url)
    with session_factory(bound)() as session:
        [stored] = session.scalars(select(Report)).all()
    bound.dispose()
    body = json.loads(stored.body)
    assert body["host"] == host.fingerprint and body["payload"]["findings"] == [FINDING]
    public = host.key.public_key_bytes()
    assert verify_signature(public, stored.body.encode(), bytes.fromhex(stored.signature))
