"""What one ingest transaction writes, on SQLite (one statement per table) and on PostgreSQL
(one statement for all three): the report, its findings in the order sent, and the host's
row, which keeps every column a message does not change. And a forged message is refused
whether the server verifies it before its transaction (the host's key cached) or inside it
(a host's first message to this process), alone or in a batch."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet_support import ServerProcess, call, count, enrolled_host, new_host
from sqlalchemy import select

from patchguard.fleet.wire import Message, envelope
from patchguard.server.db import FindingRow, Host, Report, engine, session_factory
from patchguard.signing import HostKey

DIGEST_A = "a" * 64


def post(server: ServerProcess, fingerprint: str, key: HostKey, message: Message) -> int:
    assert message.host == fingerprint
    status, _ = call(
        f"{server.url}/api/v1/reports",
        envelope(message, key),
        {"Content-Type": "application/json"},
    )
    return status


def finding(subject: str, severity: str, evidence: dict[str, Any]) -> dict[str, Any]:
    return {
        "surface": "ebpf",
        "technique": "rootkit-helper",
        "severity": severity,
        "subject": subject,
        "summary": "a kprobe program calls bpf_override_return",
        "attack_id": "T1014",
        "evidence": evidence,
    }


def host_row(db_url: str) -> Host:
    bound = engine(db_url)
    try:
        with session_factory(bound)() as session:
            return session.scalars(select(Host)).one()
    finally:
        bound.dispose()


def stored_findings(db_url: str) -> list[tuple[str, dict[str, Any], datetime, datetime]]:
    """(subject, evidence, seen_at, the report's received_at) in the order of their ids."""
    bound = engine(db_url)
    try:
        with session_factory(bound)() as session:
            query = (
                select(FindingRow, Report.received_at)
                .join(Report, Report.id == FindingRow.report_pk)
                .order_by(FindingRow.id)
            )
            return [(f.subject, f.evidence, f.seen_at, at) for f, at in session.execute(query)]
    finally:
        bound.dispose()


def test_a_forged_message_is_refused_before_and_after_the_key_is_cached(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    forger = new_host(tmp_path, "forger").key
    fp = host.fingerprint
    payload = {"findings": [finding("prog 1", "high", {})]}
    # the first message this process sees from the host: verified inside the transaction
    assert post(server, fp, forger, Message(fp, 1, "report", payload)) == 401
    assert post(server, fp, host.key, Message(fp, 1, "heartbeat", {"interval": 30})) == 200
    # now the key is cached: verified before any transaction
    assert post(server, fp, forger, Message(fp, 2, "report", payload)) == 401
    assert count(server.db_url, Report) == 1 and count(server.db_url, FindingRow) == 0
    assert host_row(server.db_url).last_seq == 1


def test_findings_keep_their_order_and_text_and_the_host_row_what_is_unchanged(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    fp, key = host.fingerprint, host.key
    beat = Message(fp, 1, "heartbeat", {"interval": 30}, baseline_digest=DIGEST_A)
    assert post(server, fp, key, beat) == 200
    after_beat = host_row(server.db_url)
    assert after_beat.heartbeat_interval == 30 and after_beat.baseline_digest == DIGEST_A
    assert after_beat.last_report_at is None and after_beat.last_heartbeat_at is not None

    sent = [
        finding("prog 7 (naïve «hook»)", "high", {"prog_id": 7, "note": "é\u2028", "n": [1.5]}),
        finding("prog 3", "critical", {"surface": "from the host", "deep": {"a": {"b": None}}}),
        finding("prog 5 <b>", "low", {}),
    ]
    assert post(server, fp, key, Message(fp, 2, "report", {"findings": sent})) == 200
    after_report = host_row(server.db_url)
    assert after_report.last_heartbeat_at == after_beat.last_heartbeat_at
    assert after_report.heartbeat_interval == 30 and after_report.baseline_digest == DIGEST_A
    assert after_report.last_report_at is not None and after_report.last_clean_sweep_at is None
    assert after_report.last_seq == 2 and after_report.status == "active"

    rows = stored_findings(server.db_url)
    assert [subject for subject, *_ in rows] == [f["subject"] for f in sent]
    for (_, evidence, seen_at, received_at), f in zip(rows, sent, strict=True):
        assert evidence == {"surface": f["surface"], "attack_id": "T1014", **f["evidence"]}
        assert seen_at == received_at
    assert rows[1][1]["surface"] == "from the host"  # the host's own key wins, as before

    clean = {"findings": [finding("prog 9", "info", {})]}
    assert post(server, fp, key, Message(fp, 3, "sweep", clean)) == 200
    assert post(server, fp, key, Message(fp, 4, "stop", {"reason": "shutdown"})) == 200
    last = host_row(server.db_url)
    assert last.last_clean_sweep_at is not None and last.status == "stopped"
    assert last.last_report_at is not None and last.last_report_at > after_report.last_report_at
    assert last.heartbeat_interval == 30 and last.baseline_digest == DIGEST_A


def test_a_forged_message_in_a_batch_is_refused_and_the_rest_stored(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    forger = new_host(tmp_path, "forger").key
    fp = host.fingerprint

    def batch(*signed: tuple[HostKey, int]) -> list[int]:
        messages = [json.loads(envelope(Message(fp, seq, "heartbeat"), key)) for key, seq in signed]
        status, answer = call(
            f"{server.url}/api/v1/reports/batch",
            json.dumps({"messages": messages}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200, answer
        return [result["status"] for result in answer["results"]]

    # the key not cached yet: each message is verified inside the batch's transaction
    assert batch((host.key, 1), (forger, 2), (host.key, 3)) == [200, 401, 200]
    # cached now: verified before it
    assert batch((forger, 4), (host.key, 4)) == [401, 200]
    bound = engine(server.db_url)
    try:
        with session_factory(bound)() as session:
            assert list(session.scalars(select(Report.seq).order_by(Report.id))) == [1, 3, 4]
    finally:
        bound.dispose()
