"""The server pages on a real database (SQLite and PostgreSQL, as the server tests run them),
through the app: the ledger paged by keyset, each entry and its checks, a rewritten entry
caught, the fairness report, fleet health, and the operator pages (sign-in, cookie, CSRF,
revoke), each page escaped and sent with its security headers."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from support.synthetic_ledger import OWNER, Builder, build, store
from test_pages_render import parse

from patchguard.server.app import Settings, create_app
from patchguard.server.auth import create_token
from patchguard.server.db import (
    Alert,
    FindingRow,
    Host,
    LedgerEntry,
    Report,
    engine,
    session_factory,
    transaction,
    utcnow,
)
from patchguard.server.migrate import migrate
from patchguard.server.pages.queries import PAGE_SIZE
from patchguard.server.pages.routes import COOKIE, csrf_token

ENTRIES = 130
EVIL_HOST = "<script>alert('host')</script>"


@dataclass
class Site:
    client: TestClient
    url: str
    ledger: Builder
    operator: str  # a valid operator token

    def session(self) -> AbstractContextManager[Session]:
        return transaction(session_factory(engine(self.url)))


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    bound = engine(db_url)
    migrate(bound)
    built = build(tmp_path / "keys", ENTRIES)
    with transaction(session_factory(bound)) as session:
        store(session, built.rows())
        token = create_token(session, "operator", utcnow())
    bound.dispose()
    app = create_app(Settings(db_url=db_url, key_path=tmp_path / "server.key"))
    with TestClient(app, base_url="http://pages.test") as client:
        yield Site(client, db_url, built, token)


def _seqs(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<li id="entry-(\d+)">', html)]


def _older(html: str) -> str | None:
    found = re.search(r'href="(/ledger\?before=\d+)" rel="next"', html)
    return found[1] if found else None


def _newer(html: str) -> str | None:
    found = re.search(r'href="(/ledger\?before=\d+)" rel="prev"', html)
    return found[1] if found else None


def test_the_ledger_pages_show_every_entry_once_newest_first(site: Site) -> None:
    seen: list[int] = []
    pages: list[str] = []
    path: str | None = "/ledger"
    while path is not None:
        html = site.client.get(path).text
        pages.append(path)
        seen += _seqs(html)
        assert len(_seqs(html)) <= PAGE_SIZE
        path = _older(html)
    assert seen == list(range(ENTRIES, 0, -1))
    back = site.client.get(pages[-1]).text
    assert _newer(back) is not None
    assert _seqs(site.client.get(_newer(back) or "").text)[0] > _seqs(back)[0]


def test_the_public_page_has_the_newest_entries_and_says_the_chain_verifies(site: Site) -> None:
    answer = site.client.get("/")
    assert answer.status_code == 200
    assert _seqs(answer.text) == list(range(ENTRIES, ENTRIES - PAGE_SIZE, -1))
    assert f"All {ENTRIES} entries verify" in answer.text
    assert "\u2717" not in "".join(parse(answer.text).text)  # no entry marked as failing
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options"):
        assert header.lower() in answer.headers


def test_an_entry_page_shows_the_signed_entry_and_its_checks(site: Site) -> None:
    entry = site.ledger.entries[9]
    answer = site.client.get(f"/ledger/{entry.seq}")
    text = "".join(parse(answer.text).text)
    assert answer.status_code == 200
    for value in (entry.hash, entry.signature, entry.prev_hash, entry.actor_key):
        assert value in text
    assert "the signature verifies with the actor's key" in text
    assert "replayed from entry 1 under the ledger's rules" in text
    assert f'href="/ledger/{entry.seq - 1}"' in answer.text


@pytest.mark.parametrize("seq", ["0", str(ENTRIES + 1), "abc", "-1", "9" * 40])
def test_no_such_entry_is_a_404_page(site: Site, seq: str) -> None:
    answer = site.client.get(f"/ledger/{seq}")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")


def test_a_bad_pager_value_is_a_400_page(site: Site) -> None:
    answer = site.client.get("/ledger?before=x")
    assert answer.status_code == 400 and "before=" in answer.text


def test_an_entry_rewritten_in_the_database_is_shown_as_not_verifying(site: Site) -> None:
    assert f"All {ENTRIES} entries verify" in site.client.get("/").text  # replayed once
    with site.session() as session:
        session.execute(
            update(LedgerEntry).where(LedgerEntry.seq == 7).values(payload='{"reason":"quiet"}')
        )
    text = "".join(parse(site.client.get("/ledger/7").text).text)
    assert "the hash is not the SHA-256 of the entry's contents" in text
    assert "entry 7: hash does not match its contents" in text
    deadline = time.monotonic() + 30  # the page asked for a replay from entry 1
    while time.monotonic() < deadline:
        html = site.client.get("/").text
        if "The ledger does not verify" in html:
            break
        time.sleep(0.1)
    assert "The ledger does not verify: entry 7: hash does not match its contents" in html
    shown = "".join(parse(html).text)
    assert "\u2717 does not verify" in shown  # the newest entries are after the break


def test_the_fairness_report_lists_the_owner_like_everyone_else(site: Site) -> None:
    html = site.client.get("/").text
    section = html[html.index('id="fairness"') : html.index('id="ledger"')]
    rows = re.findall(r"<tr><td class=\"text\">(.*?)</tr>", section, re.S)
    vendors = sorted({r.vendor for r in site.ledger.state.requests.values()}, key=str.casefold)
    names = [parse(r).text[0].strip() for r in rows]
    assert names == vendors  # every vendor, by name, the owner among them
    owner_row = rows[names.index(OWNER)]
    assert "ledger owner" in owner_row
    for row, vendor in zip(rows, names, strict=True):
        mine = [q for q in site.ledger.state.requests.values() if q.vendor == vendor]
        cells = re.findall(r'data-label="(\w[\w ]*)">([^<]*)<', row)
        got = dict(cells)
        assert int(got["requests"]) == len(mine)
        assert int(got["approved"]) == sum(q.decision == "approved" for q in mine)
        assert int(got["denied"]) == sum(q.decision == "denied" for q in mine)
        worst = max(q.decided_at - q.requested_at for q in mine if q.decided_at)
        assert got["worst time to decision"] == _duration(worst)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;Corp&lt;/b&gt;" in section


def _duration(value: timedelta) -> str:
    hours, rest = divmod(int(value.total_seconds()), 3600)
    return f"{hours}h {rest // 60}m"


def _add_hosts(site: Site) -> dict[str, str]:
    """Four hosts, one per status, with findings on the silent one; name: fingerprint."""
    now = utcnow()
    made = {}
    with site.session() as session:
        for n, (name, seen, interval, status, revoked) in enumerate(
            [
                ("web-1", now, 10, "active", None),
                (EVIL_HOST, now - timedelta(seconds=300), 10, "active", None),
                ("db-1", now - timedelta(hours=1), None, "stopped", None),
                ("old-1", now - timedelta(days=2), 10, "revoked", now - timedelta(days=1)),
            ]
        ):
            fingerprint = f"{n:016x}"
            host = Host(
                name=name,
                public_key="ab" * 32,
                fingerprint=fingerprint,
                enrolled_at=now,
                revoked_at=revoked,
                last_seq=1,
                last_seen_at=seen,
                last_report_at=seen,
                heartbeat_interval=interval,
                status=status,
            )
            session.add(host)
            session.flush()
            made[name] = fingerprint
            if name == EVIL_HOST:
                _findings(session, host.id, now)
    return made


def _findings(session: Session, host_id: int, now: datetime) -> None:
    for n, kind in enumerate(("sweep", "sweep", "finding")):
        report = Report(
            report_id=f"r{host_id}-{n}",
            host_id=host_id,
            seq=n + 1,
            kind=kind,
            sent_at=now,
            received_at=now,
            baseline_digest=None,
            body="{}",
            signature="00",
        )
        session.add(report)
        session.flush()
        session.add(
            FindingRow(
                host_id=host_id,
                report_pk=report.id,
                severity=("low", "high", "critical")[n],
                technique=f"<i>technique {n}</i>",
                subject="sys_call_table[59]",
                summary="entry points outside the kernel",
                disposition="tampering",
                evidence={"owner": "<script>evidence()</script>", "bytes": "e8 00 00 00 00"},
                seen_at=now,
            )
        )
    session.add(
        Alert(
            kind="silent",
            host_id=host_id,
            severity="high",
            created_at=now,
            resolved_at=None,
            evidence={"missed": 3},
        )
    )


def test_fleet_health_counts_hosts_by_status_and_charts_findings(site: Site) -> None:
    _add_hosts(site)
    html = site.client.get("/").text
    stats = dict(
        (label, int(n)) for n, label in re.findall(r"<li><b[^>]*>(\d+)</b>(\w+)</li>", html)
    )
    assert stats == {"enrolled": 4, "reporting": 1, "silent": 1, "stopped": 1, "revoked": 1}
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert len(re.findall(r'class="sev-(critical|high|low)"', svg)) == 3
    assert f"{utcnow().date().isoformat()}: 1 critical, 1 high, 1 low" in svg


def test_operator_pages_ask_for_a_token(site: Site) -> None:
    answer = site.client.get("/operator")
    assert answer.status_code == 200 and 'name="token"' in answer.text
    assert answer.headers["cache-control"] == "no-store"
    bad = site.client.get("/operator", headers={"Authorization": "Bearer pgt_" + "x" * 43})
    assert bad.status_code == 401 and "unknown token" in bad.text
    assert site.client.get("/operator/hosts/0000000000000000").status_code == 401


def _sign_in(site: Site) -> None:
    answer = site.client.post(
        "/operator/login", data={"token": site.operator}, follow_redirects=False
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/operator" in cookie


def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie(site: Site) -> None:
    made = _add_hosts(site)
    wrong = site.client.post("/operator/login", data={"token": "pgt_" + "y" * 43})
    assert wrong.status_code == 401 and COOKIE not in site.client.cookies
    _sign_in(site)
    html = site.client.get("/operator").text
    page = parse(html)
    assert "script" not in page.tags
    assert EVIL_HOST in "".join(page.text)
    for name, fingerprint in made.items():
        assert f'href="/operator/hosts/{fingerprint}"' in html, name
    assert re.search(r'data-label="status"><span class="bad">silent<', html)
    assert re.search(r'data-label="open findings">2<', html)  # the last sweep and after
    assert re.search(r'data-label="open alerts">1<', html)
    attention = html[html.index("Hosts with open alerts (1)") : html.index("All hosts")]
    assert f'href="/operator/hosts/{made[EVIL_HOST]}"' in attention


def test_a_host_page_shows_open_findings_with_their_evidence(site: Site) -> None:
    fingerprint = _add_hosts(site)[EVIL_HOST]
    answer = site.client.get(
        f"/operator/hosts/{fingerprint}", headers={"Authorization": f"Bearer {site.operator}"}
    )
    page = parse(answer.text)
    text = "".join(page.text)
    assert not {"script", "i"} & set(page.tags)
    assert "<i>technique 1</i>" in text and "<i>technique 2</i>" in text
    assert "<i>technique 0</i>" not in text  # superseded by the later sweep
    assert "<script>evidence()</script>" in text and "e8 00 00 00 00" in text
    assert text.index("technique 2") < text.index("technique 1")  # critical first


def _revoked(site: Site, fingerprint: str) -> bool:
    with site.session() as session:
        host = session.scalars(select(Host).where(Host.fingerprint == fingerprint)).one()
        return host.revoked_at is not None


def test_revoking_a_host_needs_the_csrf_field_and_this_origin(site: Site) -> None:
    fingerprint = _add_hosts(site)["web-1"]
    _sign_in(site)
    path = f"/operator/hosts/{fingerprint}/revoke"
    no_field = site.client.post(path, data={"other": "1"})
    assert no_field.status_code == 403 and "CSRF" in no_field.text
    forged = site.client.post(path, data={"csrf": csrf_token("pgt_" + "z" * 43)})
    assert forged.status_code == 403
    csrf = csrf_token(site.operator)
    elsewhere = site.client.post(path, data={"csrf": csrf}, headers={"Origin": "http://evil.test"})
    assert elsewhere.status_code == 403 and "another site" in elsewhere.text
    assert not _revoked(site, fingerprint)
    assert f'value="{csrf}"' in site.client.get(f"/operator/hosts/{fingerprint}").text
    done = site.client.post(path, data={"csrf": csrf}, headers={"Origin": "http://pages.test"})
    assert done.status_code == 200 and "revoked" in done.text  # followed to the host page
    assert _revoked(site, fingerprint)


def test_a_form_too_large_or_of_another_type_is_refused(site: Site) -> None:
    big = site.client.post(
        "/operator/login",
        content=b"token=" + b"a" * 10000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413
    json = site.client.post("/operator/login", json={"token": site.operator})
    assert json.status_code == 415


def test_sign_out_forgets_the_cookie(site: Site) -> None:
    _sign_in(site)
    html = site.client.get("/operator").text
    csrf = re.findall(r'name="csrf" value="([0-9a-f]+)"', html)[0]
    answer = site.client.post("/operator/logout", data={"csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 303 and f'{COOKIE}=""' in answer.headers["set-cookie"]
