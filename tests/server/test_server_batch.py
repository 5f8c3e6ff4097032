"""Reports sent in batches (POST /api/v1/reports/batch), on SQLite and PostgreSQL: a host's
spool goes in one request and one transaction, in order; a message refused in a batch is set
aside and the rest stored; a batch that is not one host's well-formed list, or is over its
2 MiB, is refused whole with a 4xx and nothing stored; and a stop sent with `send_last`
goes after what was queued before it, never before, while what was queued after it waits."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from fleet_support import ServerProcess, call, count, enrolled_host
from sqlalchemy import select

from patchguard.fleet import client
from patchguard.fleet.wire import MAX_BODY, Message, envelope
from patchguard.server.db import Host, Report, engine, session_factory

JSON = {"Content-Type": "application/json"}


def _stored(db_url: str) -> list[tuple[int, str, object]]:
    """(seq, kind, received_at) of every stored report, in the order stored."""
    bound = engine(db_url)
    try:
        with session_factory(bound)() as session:
            query = select(Report.seq, Report.kind, Report.received_at).order_by(Report.id)
            return [(seq, kind, at) for seq, kind, at in session.execute(query)]
    finally:
        bound.dispose()


def test_a_spool_goes_in_one_transaction_in_order(server: ServerProcess, tmp_path: Path) -> None:
    host = enrolled_host(server, tmp_path)
    for n in range(5):
        client.queue(host.directory, host.key, "heartbeat", {"interval": 60 + n})
    done = client.deliver(host.directory)
    assert (done.sent, done.pending, done.rejected, done.unreachable) == (5, 0, (), None)
    stored = _stored(server.db_url)
    assert [seq for seq, _, _ in stored] == [1, 2, 3, 4, 5]
    assert len({when for _, _, when in stored}) == 1  # one transaction: one time for all


def test_a_refused_message_is_set_aside_and_the_rest_stored(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    client.queue(host.directory, host.key, "heartbeat", {"interval": 60})
    assert client.deliver(host.directory).sent == 1
    stale = Message(host.fingerprint, 1, "heartbeat", {"interval": 61})  # seq 1 again
    client.spool_of(host.directory).put(json.loads(envelope(stale, host.key)))
    client.queue(host.directory, host.key, "heartbeat", {"interval": 62})
    done = client.deliver(host.directory)
    assert done.sent == 1 and done.pending == 0
    assert len(done.rejected) == 1 and "409 sequence 1 is not after 1" in done.rejected[0]
    assert [seq for seq, _, _ in _stored(server.db_url)] == [1, 2]
    assert len(list((host.directory / "fleet-rejected").glob("*.json"))) == 1


def test_a_malformed_batch_is_refused_whole(server: ServerProcess, tmp_path: Path) -> None:
    one, two = enrolled_host(server, tmp_path, "one"), enrolled_host(server, tmp_path, "two")
    a = envelope(Message(one.fingerprint, 1, "heartbeat", {"interval": 60}), one.key)
    b = envelope(Message(two.fingerprint, 1, "heartbeat", {"interval": 60}), two.key)
    url = f"{server.url}/api/v1/reports/batch"
    cases = {
        b"not json": (400, "malformed JSON"),
        b'{"messages": []}': (422, "a list of 1 to 64"),
        b'{"messages": [], "more": 1}': (422, "nothing else"),
        b'{"messages": [' + b",".join([a] * 65) + b"]}": (422, "a list of 1 to 64"),
        b'{"messages": [' + a + b"," + b + b"]}": (422, "the messages of one host"),
    }
    for body, (status, text) in cases.items():
        answer = call(url, body, JSON)
        assert answer[0] == status and text in answer[1]["error"], (body[:40], answer)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/api/v1/reports/batch")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(2 * MAX_BODY + 1))
    connection.endheaders()  # no body: the answer comes from the length alone
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"error": f"body larger than {2 * MAX_BODY} bytes"}
    connection.close()
    assert count(server.db_url, Report) == 0
    assert call(url, b'{"messages": [' + a + b"]}", JSON)[1]["results"][0]["status"] == 200


def test_a_stop_goes_after_what_was_queued_before_it(server: ServerProcess, tmp_path: Path) -> None:
    host = enrolled_host(server, tmp_path)
    for _ in range(3):
        client.queue(host.directory, host.key, "heartbeat", {"interval": 60})
    done = client.send_last(host.directory, host.key, "stop", {"reason": "test"})
    assert (done.sent, done.pending) == (4, 0)
    client.queue(host.directory, host.key, "heartbeat", {"interval": 60})  # after the stop
    assert client.send_last(host.directory, host.key, "stop", {"reason": "again"}).sent == 2
    kinds = [kind for _, kind, _ in _stored(server.db_url)]
    assert kinds == ["heartbeat"] * 3 + ["stop", "heartbeat", "stop"]
    bound = engine(server.db_url)
    with session_factory(bound)() as session:
        assert session.scalar(select(Host.status)) == "stopped"
    bound.dispose()


def test_a_stop_with_nothing_before_it_goes_alone_and_leaves_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    host = enrolled_host(server, tmp_path)
    done = client.send_last(host.directory, host.key, "stop", {"reason": "test"})
    assert (done.sent, done.pending, done.unreachable) == (1, 0, None)
    assert not client.spool_of(host.directory).pending()
    assert (host.directory / "fleet.seq").read_text() == "1\n"
    server.stop()
    down = client.send_last(host.directory, host.key, "stop", {"reason": "server down"})
    assert down.sent == 0 and down.pending == 1 and down.unreachable is not None
