"""Bad input of every kind gets a 4xx with a one-line reason, never a 500, and nothing is
stored: oversized or chunked bodies, malformed JSON, wrong content types, unknown fields,
huge strings, NUL characters, naive times, nesting deeper than Python's stack."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fleet_support import (
    HostSide,
    ServerProcess,
    call,
    count,
    enrolled_host,
    new_pg_database,
)

from patchguard.fleet.wire import MAX_BODY, Message, enrol_proof, envelope
from patchguard.policy.chain import canonical
from patchguard.server.db import Alert, FindingRow, Host, Report

JSON = {"Content-Type": "application/json"}
FINDING = {
    "surface": "ebpf",
    "technique": "t",
    "severity": "high",
    "subject": "s",
    "summary": "x",
}


def signed(host: HostSide, body: dict[str, object]) -> bytes:
    """A correctly signed envelope around any body, canonical as the server wants it."""
    text = canonical(body)
    return json.dumps({"body": text, "signature": host.key.sign(text.encode()).hex()}).encode()


def body_of(host: HostSide, **changes: object) -> dict[str, object]:
    body: dict[str, object] = json.loads(Message(host.fingerprint, 1, "report").body())
    body.update(changes)
    return body


def with_finding(host: HostSide, **changes: object) -> bytes:
    return signed(host, body_of(host, payload={"findings": [{**FINDING, **changes}]}))


CASES: dict[str, Callable[[HostSide], tuple[bytes, dict[str, str]]]] = {
    "malformed JSON": lambda h: (b'{"body": ', JSON),
    "not UTF-8": lambda h: (b'{"body": "\xff\xfe"}', JSON),
    "a JSON array": lambda h: (b"[1, 2]", JSON),
    "text/plain": lambda h: (
        envelope(Message(h.fingerprint, 1, "report"), h.key),
        {"Content-Type": "text/plain"},
    ),
    "no content type": lambda h: (envelope(Message(h.fingerprint, 1, "report"), h.key), {}),
    "form content type": lambda h: (b"a=1", {"Content-Type": "application/x-www-form-urlencoded"}),
    "unknown envelope field": lambda h: (
        json.dumps(
            {**json.loads(envelope(Message(h.fingerprint, 1, "report"), h.key)), "x": 1}
        ).encode(),
        JSON,
    ),
    "signature not hex": lambda h: (
        json.dumps({"body": "{}", "signature": "zz" * 64}).encode(),
        JSON,
    ),
    "body not canonical": lambda h: (
        json.dumps({"body": json.dumps(body_of(h)), "signature": "00" * 64}).encode(),
        JSON,
    ),
    "body not JSON": lambda h: (
        json.dumps({"body": "{nope", "signature": "00" * 64}).encode(),
        JSON,
    ),
    "body nested too deep": lambda h: (
        json.dumps({"body": "[" * 100_000 + "]" * 100_000, "signature": "00" * 64}).encode(),
        JSON,
    ),
    "unknown body field": lambda h: (signed(h, body_of(h, extra="x")), JSON),
    "unknown payload field": lambda h: (signed(h, body_of(h, payload={"vendor": "x"})), JSON),
    "unknown finding field": lambda h: (with_finding(h, vendor="<b>x</b>"), JSON),
    "unknown kind": lambda h: (signed(h, body_of(h, kind="delete-everything")), JSON),
    "unknown severity": lambda h: (with_finding(h, severity="apocalyptic"), JSON),
    "huge subject": lambda h: (with_finding(h, subject="A" * 5000), JSON),
    "huge evidence": lambda h: (with_finding(h, evidence={"x": "B" * 70_000}), JSON),
    "NUL in summary": lambda h: (with_finding(h, summary="a\x00b"), JSON),
    "NUL in evidence": lambda h: (with_finding(h, evidence={"x": "a\x00b"}), JSON),
    "too many findings": lambda h: (
        signed(h, body_of(h, payload={"findings": [FINDING] * 2001})),
        JSON,
    ),
    "seq zero": lambda h: (signed(h, body_of(h, seq=0)), JSON),
    "seq huge": lambda h: (signed(h, body_of(h, seq=10**30)), JSON),
    "seq as text": lambda h: (signed(h, body_of(h, seq="1")), JSON),
    "naive time": lambda h: (signed(h, body_of(h, time="2026-01-01T00:00:00")), JSON),
    "not a time": lambda h: (signed(h, body_of(h, time="yesterday")), JSON),
    "bad id": lambda h: (signed(h, body_of(h, id="../../etc")), JSON),
    "bad digest": lambda h: (signed(h, body_of(h, baseline_digest="A" * 64)), JSON),
    "float for an int": lambda h: (signed(h, body_of(h, payload={"gaps": 1.5})), JSON),
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def corpus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, HostSide]]:
    """One server and one enrolled host for the whole corpus: nothing in it may be stored."""
    workdir = tmp_path_factory.mktemp("corpus")
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'server.db'}"
    else:
        url = new_pg_database(request.getfixturevalue("postgres"))
    server = ServerProcess(url, workdir).start()
    try:
        yield server, enrolled_host(server, workdir)
    finally:
        server.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_report_is_refused_and_nothing_stored(
    corpus: tuple[ServerProcess, HostSide], case: str
) -> None:
    server, host = corpus
    raw, headers = CASES[case](host)
    status, answer = call(f"{server.url}/api/v1/reports", raw, headers)
    assert 400 <= status < 500, (status, answer)
    assert isinstance(answer["error"], str) and "\n" not in answer["error"]
    assert count(server.db_url, Report) == 0 and count(server.db_url, FindingRow) == 0
    assert count(server.db_url, Alert) == 0
    assert "Traceback" not in server.log.read_text()


def test_oversized_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/api/v1/reports")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_BODY + 1))
    connection.endheaders()  # not one byte of the body: the answer comes anyway
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"error": f"body larger than {MAX_BODY} bytes"}
    connection.close()
    assert count(server.db_url, Report) == 0


def test_chunked_body_over_the_limit_is_refused_while_read(server: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"x" * 65536 for _ in range(MAX_BODY // 65536 + 1))  # just over the limit
    connection.request("POST", "/api/v1/reports", chunks, JSON, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"error": f"body larger than {MAX_BODY} bytes"}
    connection.close()


def enrol_body(host: HostSide, signed_name: str, **changes: object) -> bytes:
    public = host.key.public_key_bytes().hex()
    proof = enrol_proof(signed_name, public, host.key)
    body = {"name": signed_name, "public_key": public, "proof": proof}
    return json.dumps({**body, **changes}).encode()


def test_bad_enrolments_are_refused(server: ServerProcess, tmp_path: Path) -> None:
    from fleet_support import make_token, new_host

    host = new_host(tmp_path)
    token = make_token(server.db_url, "enrol", uses=100)
    headers = {**JSON, "Authorization": f"Bearer {token}"}
    url = f"{server.url}/api/v1/enrol"
    cases = {
        "huge name": enrol_body(host, "<script>" * 2000),
        "NUL name": enrol_body(host, "a\x00b"),
        "unknown field": enrol_body(host, "h", vendor="x"),
        "proof by another key": enrol_body(host, "h", name="other"),
        "key not hex": enrol_body(host, "h", public_key="g" * 64),
        "key not on the curve": enrol_body(host, "h", public_key="ff" * 32),
        "malformed": b"{",
    }
    for case, raw in cases.items():
        status, answer = call(url, raw, headers)
        assert 400 <= status < 500, (case, status, answer)
    assert call(url, enrol_body(host, "h"), {"Authorization": f"Bearer {token}"})[0] == 415
    assert count(server.db_url, Host) == 0
    assert "Traceback" not in server.log.read_text()
    # the name is stored as the text it is; the pages escape it
    status, _ = call(url, enrol_body(host, "<b>vendor</b> & co"), headers)
    assert status == 200
