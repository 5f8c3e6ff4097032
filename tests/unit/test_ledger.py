"""The exception ledger: every kind of tampering found and located, the neutral rules enforced,
expiry derived from the date, and no partial entry after a crash, a refusal or a full disk."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from patchguard.policy import ledger
from patchguard.policy.chain import content_hash, seal
from patchguard.policy.exceptions import (
    decide,
    grant_key,
    init_ledger,
    live_exceptions,
    record_expiries,
    request_exception,
    requests,
    revoke,
    set_max_expiry,
    vendor_report,
)
from patchguard.policy.ledger import LedgerError, append, export_json, load, verify
from patchguard.policy.manifest import Manifest, parse_manifest
from patchguard.signing import HostKey

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
MANIFEST = """\
vendor = "Acme Security"
product = "acme-sensor"
version = "4.2.0"
contact = "security@acme.example"
justification = "EDR telemetry"

[[bpf_program]]
name = "trace_kill"
prog_type = "tracepoint"
attach = "tracepoint:sys_enter_kill"
helpers = ["bpf_get_current_pid_tgid"]
loader = { path = "/opt/acme/bin/acme-sensor", sha256 = "%s" }
""" % ("cd" * 32)


def manifest(vendor: str = "Acme Security") -> Manifest:
    return parse_manifest(MANIFEST.replace("Acme Security", vendor).encode(), "acme.toml")


@dataclass
class World:
    path: Path
    owner: HostKey  # entry 1: the policy key
    reviewer: HostKey  # "Review Board", may approve
    acme: HostKey  # "Acme Security", no role: a vendor key
    acme2: HostKey  # "ACME SECURITY", may approve: still Acme
    stranger: HostKey  # registered nowhere


@pytest.fixture
def world(tmp_path: Path) -> World:
    keys = {
        name: HostKey.load_or_create(tmp_path / "keys" / f"{name}.key")
        for name in ("owner", "reviewer", "acme", "acme2", "stranger")
    }
    path = tmp_path / "ledger.db"
    init_ledger(path, keys["owner"], "Host Owner", now=T0)  # 1
    grant = [("reviewer", "Review Board", ["approve"]), ("acme", "Acme Security", [])]
    grant.append(("acme2", "ACME SECURITY", ["approve"]))
    for name, who, roles in grant:  # 2, 3, 4
        grant_key(path, keys["owner"], keys[name].public_key_bytes(), who, roles, now=T0)
    return World(path, **keys)


def ask(w: World, key: HostKey | None = None, days: int = 30, at: datetime = T0, **kw: Any) -> int:
    expires = at.date() + timedelta(days=days)
    return request_exception(w.path, key or w.acme, manifest(), expires, now=at, **kw).entry.seq


@pytest.fixture
def full(world: World) -> World:
    """Nine entries: 5 request, 6 approve, 7 request, 8 deny, 9 request."""
    assert ask(world) == 5
    decide(world.path, world.reviewer, 5, True, "reviewed", now=T0 + timedelta(hours=1))
    assert ask(world, at=T0 + timedelta(hours=2)) == 7
    decide(world.path, world.reviewer, 7, False, "duplicate", now=T0 + timedelta(hours=5))
    assert ask(world, at=T0 + timedelta(hours=6)) == 9
    return world


def tamper(path: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Edit the file as an attacker would: drop the append-only triggers, then change rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
    conn.execute(statement, params)
    conn.close()


def row(path: Path, seq: int) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    found = conn.execute("SELECT * FROM entries WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    return dict(found)


def insert(path: Path, values: dict[str, Any]) -> None:
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    tamper(path, f"INSERT INTO entries ({names}) VALUES ({marks})", tuple(values.values()))


def failure(path: Path) -> tuple[int | None, str | None]:
    result = verify(path)
    assert not result.ok
    return result.bad_seq, result.reason


def count(path: Path) -> int:
    return len(ledger.read_rows(path))


# ---------------------------------------------------------------------------- a good ledger


def test_a_good_ledger_verifies_and_names_its_head(full: World) -> None:
    result = verify(full.path)
    assert result.ok and result.entries == 9 and result.reason is None
    assert result.head == row(full.path, 9)["hash"]
    assert row(full.path, 1)["prev_hash"] == "0" * 64
    assert row(full.path, 6)["prev_hash"] == row(full.path, 5)["hash"]


def test_the_triggers_refuse_plain_edits(full: World) -> None:
    conn = sqlite3.connect(full.path, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE entries SET payload = '{}' WHERE seq = 6")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE seq = 9")
    conn.close()
    assert verify(full.path).ok


# ---------------------------------------------------------------------------- tampering


def test_an_edited_payload_is_found_at_its_entry(full: World) -> None:
    tamper(
        full.path, "UPDATE entries SET payload = replace(payload, 'duplicate', 'ok') WHERE seq=8"
    )
    assert failure(full.path) == (8, "entry 8: hash does not match its contents")


def test_an_edited_time_is_found(full: World) -> None:
    tamper(full.path, "UPDATE entries SET time = '2026-01-09T00:00:00+00:00' WHERE seq = 3")
    assert failure(full.path) == (3, "entry 3: hash does not match its contents")


def test_a_deleted_entry_is_found(full: World) -> None:
    tamper(full.path, "DELETE FROM entries WHERE seq = 5")
    assert failure(full.path) == (6, "entries skip from 4 to 6")


def test_a_deleted_first_entry_is_found(full: World) -> None:
    tamper(full.path, "DELETE FROM entries WHERE seq = 1")
    assert failure(full.path) == (2, "entry 1 is missing: the ledger starts at entry 2")


def test_swapped_entries_are_found(full: World) -> None:
    tamper(full.path, "UPDATE entries SET seq = -5 WHERE seq = 5")
    tamper(full.path, "UPDATE entries SET seq = 5 WHERE seq = 7")
    tamper(full.path, "UPDATE entries SET seq = 7 WHERE seq = -5")
    assert failure(full.path) == (5, "entry 5: hash does not match its contents")


def test_a_forged_row_with_a_made_up_hash_is_found(full: World) -> None:
    forged = dict(row(full.path, 6), seq=10, prev_hash=row(full.path, 9)["hash"])
    insert(full.path, forged)
    assert failure(full.path) == (10, "entry 10: hash does not match its contents")


def test_a_signed_row_that_does_not_link_is_found(full: World) -> None:
    # Properly hashed and signed by a real approver, but chained to entry 8, not 9.
    entry = seal(10, T0 + timedelta(hours=7), "approve", full.reviewer, 9, {"reason": "x"},
                 row(full.path, 8)["hash"])  # fmt: skip
    insert(full.path, entry.as_dict())
    assert failure(full.path) == (10, "entry 10: prev_hash does not link to entry 9")


def test_a_row_slipped_into_the_middle_is_found(full: World) -> None:
    # Make room after entry 6 and slip in a well-formed, well-linked, well-signed entry 7:
    # the entry that was 7 now carries seq 8, which its hash and signature never covered.
    tamper(full.path, "UPDATE entries SET seq = seq + 100 WHERE seq >= 7")
    tamper(full.path, "UPDATE entries SET seq = seq - 99 WHERE seq >= 100")
    entry = seal(7, T0 + timedelta(hours=1), "revoke", full.reviewer, 5, {"reason": "slipped"},
                 row(full.path, 6)["hash"])  # fmt: skip
    insert(full.path, entry.as_dict())
    assert failure(full.path) == (8, "entry 8: hash does not match its contents")


def test_a_signature_by_another_key_is_refused(full: World) -> None:
    # Change the reason, recompute the hash honestly, sign it with a key that is not the actor's.
    old = row(full.path, 6)
    payload = json.dumps({"reason": "rubber stamp"}, separators=(",", ":"))
    fields = {k: old[k] for k in ("time", "kind", "actor", "actor_key", "subject", "prev_hash")}
    digest = content_hash(6, payload=payload, **fields)
    signature = full.stranger.sign(bytes.fromhex(digest)).hex()
    tamper(full.path, "UPDATE entries SET payload=?, hash=?, signature=? WHERE seq=6",
           (payload, digest, signature))  # fmt: skip
    fp = full.reviewer.fingerprint()
    assert failure(full.path) == (6, f"entry 6: signature does not verify for actor {fp}")


def test_an_entry_resigned_as_another_actor_is_found(full: World) -> None:
    # The approval rewritten wholesale as the stranger's own entry: valid hash and signature,
    # but the stranger may not approve anything.
    old = row(full.path, 6)
    forged = seal(6, T0 + timedelta(hours=1), "approve", full.stranger, 5, {"reason": "mine"},
                  old["prev_hash"])  # fmt: skip
    tamper(full.path, "DELETE FROM entries WHERE seq = 6")
    insert(full.path, forged.as_dict())
    fp = full.stranger.fingerprint()
    assert failure(full.path) == (
        6, f"entry 6: key {fp} may not decide requests (it lacks the approve role)"
    )  # fmt: skip


def test_an_entry_resigned_by_its_own_actor_breaks_the_next_link(full: World) -> None:
    old = row(full.path, 6)
    forged = seal(6, T0 + timedelta(hours=1), "approve", full.reviewer, 5, {"reason": "other"},
                  old["prev_hash"])  # fmt: skip
    tamper(full.path, "DELETE FROM entries WHERE seq = 6")
    insert(full.path, forged.as_dict())
    assert failure(full.path) == (7, "entry 7: prev_hash does not link to entry 6")


def test_an_actor_swapped_under_a_kept_signature_is_refused(full: World) -> None:
    old = row(full.path, 6)
    actor, actor_key = full.stranger.fingerprint(), full.stranger.public_key_bytes().hex()
    fields = {k: old[k] for k in ("time", "kind", "subject", "payload", "prev_hash")}
    digest = content_hash(6, actor=actor, actor_key=actor_key, **fields)
    tamper(full.path, "UPDATE entries SET actor=?, actor_key=?, hash=? WHERE seq=6",
           (actor, actor_key, digest))  # fmt: skip
    assert failure(full.path) == (6, f"entry 6: signature does not verify for actor {actor}")


def test_a_truncated_or_rebuilt_ledger_is_caught_by_head_and_root(full: World) -> None:
    published = row(full.path, 9)["hash"]
    root = full.owner.fingerprint()
    assert verify(full.path, root=root, head=published).ok
    tamper(full.path, "DELETE FROM entries WHERE seq = 9")
    assert verify(full.path).ok  # a chain alone cannot see its own end cut off
    cut = verify(full.path, head=published)
    assert not cut.ok and "cut short or rewritten" in (cut.reason or "")
    wrong_root = verify(full.path, root=full.reviewer.fingerprint())
    assert not wrong_root.ok and wrong_root.bad_seq == 1
    assert wrong_root.reason == f"entry 1: signed by {root}, not {full.reviewer.fingerprint()}"


def test_a_tampered_entry_a_decision_rests_on_takes_no_append(full: World) -> None:
    # The append checks the head and every entry its rules read (policy, the request), not
    # the whole ledger: deciding request 7 reads entry 8, which was edited.
    tamper(
        full.path, "UPDATE entries SET payload = replace(payload, 'duplicate', 'ok') WHERE seq=8"
    )
    with pytest.raises(LedgerError, match="does not verify, nothing appended: entry 8: hash"):
        ledger.append(full.path, full.owner, "revoke", {"reason": "x"}, 7, T0 + timedelta(hours=8))
    assert count(full.path) == 9


def test_a_tampered_head_takes_no_append(full: World) -> None:
    tamper(full.path, "UPDATE entries SET time = '2026-01-01T00:00:00+00:00' WHERE seq=9")
    with pytest.raises(LedgerError, match="does not verify, nothing appended: entry 9: hash"):
        ask(full, at=T0 + timedelta(hours=8))
    assert count(full.path) == 9


def test_a_tampered_ledger_grants_nothing_whatever_was_appended(full: World) -> None:
    # An entry no rule reads for this decision is not re-checked by the append (that would
    # cost a signature per entry): verify and every reader that acts (load) still refuse.
    tamper(
        full.path, "UPDATE entries SET payload = replace(payload, 'duplicate', 'ok') WHERE seq=8"
    )
    decide(full.path, full.reviewer, 9, True, "fine", now=T0 + timedelta(hours=8))
    assert count(full.path) == 10
    with pytest.raises(LedgerError, match="does not verify: entry 8"):
        live_exceptions(full.path, now=T0 + timedelta(hours=8))
    bad = verify(full.path)
    assert not bad.ok and bad.bad_seq == 8


def test_a_policy_change_outside_the_ledger_has_no_effect(world: World) -> None:
    # Someone writes "the stranger may approve" straight into the table, unsigned: the
    # ledger stops verifying, so the change grants nothing, and nothing else is trusted either.
    forged = dict(row(world.path, 2), seq=5, prev_hash=row(world.path, 4)["hash"])
    forged["payload"] = forged["payload"].replace(
        world.reviewer.public_key_bytes().hex(), world.stranger.public_key_bytes().hex()
    )
    insert(world.path, forged)
    with pytest.raises(LedgerError, match="entry 5: hash does not match"):
        load(world.path)


# ---------------------------------------------------------------------------- the rules


def test_the_requester_cannot_approve_its_own_request(world: World) -> None:
    rid = ask(world, key=world.acme2)  # acme2 holds the approve role, but asked itself
    fp = world.acme2.fingerprint()
    with pytest.raises(LedgerError, match=f"refused: key {fp} made request #{rid}: it cannot"):
        decide(world.path, world.acme2, rid, True, "mine", now=T0)
    assert count(world.path) == rid


def test_another_key_of_the_requesting_vendor_cannot_decide(world: World) -> None:
    rid = ask(world, key=world.acme)
    for approve in (True, False):
        with pytest.raises(LedgerError, match="belongs to ACME SECURITY, the requesting vendor"):
            decide(world.path, world.acme2, rid, approve, "ours", now=T0)


def test_a_key_of_the_manifests_vendor_cannot_decide_a_request_made_by_anyone(
    world: World,
) -> None:
    rid = ask(world, key=world.stranger)  # an unregistered key asks for Acme's manifest
    with pytest.raises(LedgerError, match="belongs to ACME SECURITY, the requesting vendor"):
        decide(world.path, world.acme2, rid, True, "ours", now=T0)
    decide(world.path, world.reviewer, rid, True, "reviewed", now=T0)


def test_a_key_of_the_requesters_owner_cannot_decide_another_vendors_manifest(
    world: World,
) -> None:
    # acme asks for a manifest that names another vendor: acme2 (Acme too) still may not decide.
    rid = request_exception(
        world.path, world.acme, manifest("Independent Ltd"), date(2026, 2, 1), now=T0
    ).entry.seq
    with pytest.raises(LedgerError, match="the requesting vendor"):
        decide(world.path, world.acme2, rid, True, "not us", now=T0)


def test_keys_without_the_approve_role_cannot_decide(world: World) -> None:
    rid = ask(world)
    for key in (world.stranger, world.owner):
        with pytest.raises(LedgerError, match="lacks the approve role"):
            decide(world.path, key, rid, True, "ok", now=T0)
    assert count(world.path) == rid


def test_an_approval_makes_a_live_exception(world: World) -> None:
    rid = ask(world, scope=["web-*", "db-1"])
    assert live_exceptions(world.path, now=T0) == []
    done = decide(world.path, world.reviewer, rid, True, "reviewed the programs", now=T0)
    assert done.description == (
        f"exception #{rid} approved for Acme Security: reviewed the programs "
        f"(by {world.reviewer.fingerprint()})"
    )
    [live] = live_exceptions(world.path, now=T0 + timedelta(days=1))
    assert (live.id, live.vendor, live.scope) == (rid, "Acme Security", ("web-*", "db-1"))
    assert live.manifest == dataclasses.replace(manifest(), sha256="")
    assert live.manifest_sha256 == manifest().sha256
    with pytest.raises(LedgerError, match=f"request #{rid} is approved, not pending"):
        decide(world.path, world.reviewer, rid, False, "changed my mind", now=T0)
    with pytest.raises(LedgerError, match="there is no request #99"):
        decide(world.path, world.reviewer, 99, True, "?", now=T0)
    with pytest.raises(LedgerError, match="there is no request #2"):
        decide(world.path, world.reviewer, 2, True, "a policy entry is no request", now=T0)


def test_policy_changes_need_the_policy_role(world: World) -> None:
    with pytest.raises(LedgerError, match="may not change policy"):
        grant_key(world.path, world.reviewer, world.stranger.public_key_bytes(), "X", ["approve"])
    with pytest.raises(LedgerError, match="may not change policy"):
        set_max_expiry(world.path, world.acme2, 3000, now=T0)
    with pytest.raises(LedgerError, match="would leave no key that may change policy"):
        grant_key(world.path, world.owner, world.owner.public_key_bytes(), "Host Owner", [], T0)
    assert count(world.path) == 4


def test_the_first_entry_must_register_its_own_signer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    a, b = HostKey.generate(), HostKey.generate()
    with pytest.raises(LedgerError, match="the first entry must register the ledger owner"):
        request_exception(path, a, manifest(), date(2026, 2, 1), now=T0)
    with pytest.raises(LedgerError, match="the first entry must register the ledger owner"):
        set_max_expiry(path, a, 3000, now=T0)
    with pytest.raises(LedgerError, match="register its own signer with the policy role"):
        grant_key(path, a, b.public_key_bytes(), "B", ["policy"], now=T0)
    assert count(path) == 0
    init_ledger(path, a, "A", now=T0)
    assert verify(path, root=a.fingerprint()).ok


# ---------------------------------------------------------------------------- expiry


def test_expiry_is_required_and_bounded(world: World) -> None:
    with pytest.raises(LedgerError, match="more than 365 days away"):
        ask(world, days=366)
    with pytest.raises(LedgerError, match="is not in the future"):
        ask(world, days=0)
    with pytest.raises(LedgerError, match=r"payload\.expires must be a non-empty string"):
        payload = {"manifest": manifest().to_dict(), "manifest_sha256": "0" * 64, "scope": "all"}
        append(world.path, world.acme, "request", payload, now=T0)
    assert ask(world, days=365) == 5


def test_the_maximum_is_a_ledger_policy(world: World) -> None:
    set_max_expiry(world.path, world.owner, 30, now=T0)
    with pytest.raises(LedgerError, match="more than 30 days away"):
        ask(world, days=31)
    assert ask(world, days=30) == 6


def test_an_exception_ends_at_midnight_utc_of_its_expiry_date(world: World) -> None:
    rid = ask(world, days=10)  # expires 2026-01-20
    decide(world.path, world.reviewer, rid, True, "ok", now=T0)
    end = datetime(2026, 1, 20, tzinfo=UTC)
    assert [r.id for r in live_exceptions(world.path, now=end - timedelta(seconds=1))] == [rid]
    assert live_exceptions(world.path, now=end) == []
    [req] = requests(world.path)
    assert req.status == "approved" and req.status_at(end) == "expired"
    with pytest.raises(LedgerError, match="is expired: only a live exception is revoked"):
        revoke(world.path, world.reviewer, rid, "late", now=end)
    assert record_expiries(world.path, world.stranger, now=end - timedelta(seconds=1)) == []
    [done] = record_expiries(world.path, world.stranger, now=end)
    assert done.entry.kind == "expire" and done.entry.subject == rid
    assert record_expiries(world.path, world.stranger, now=end + timedelta(days=1)) == []
    assert verify(world.path).ok and requests(world.path)[0].status == "expired"


def test_a_pending_request_past_its_date_cannot_be_approved(world: World) -> None:
    rid = ask(world, days=2)
    with pytest.raises(LedgerError, match=f"request #{rid} is expired, not pending"):
        decide(world.path, world.reviewer, rid, True, "too late", now=T0 + timedelta(days=3))


def test_revocation(world: World) -> None:
    rid = ask(world)
    decide(world.path, world.reviewer, rid, True, "ok", now=T0)
    with pytest.raises(LedgerError, match="may not revoke"):
        revoke(world.path, world.stranger, rid, "no", now=T0)
    revoke(world.path, world.acme, rid, "we removed the sensor", now=T0)  # the requester may
    assert live_exceptions(world.path, now=T0) == []
    with pytest.raises(LedgerError, match="is revoked: only a live exception is revoked"):
        revoke(world.path, world.reviewer, rid, "again", now=T0)
    assert requests(world.path)[0].decision == "approved"


def test_the_clock_may_not_run_backwards(world: World) -> None:
    with pytest.raises(LedgerError, match="is behind entry 4"):
        ask(world, at=T0 - timedelta(seconds=1))


# ---------------------------------------------------------------------------- crashes


def test_an_error_after_the_insert_leaves_no_partial_entry(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ledger._insert

    def insert_then_fail(conn: sqlite3.Connection, entry: Any) -> None:
        real(conn, entry)
        assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 5  # it was in
        raise RuntimeError("crash after the insert")

    monkeypatch.setattr(ledger, "_insert", insert_then_fail)
    with pytest.raises(RuntimeError, match="crash after the insert"):
        ask(world)
    assert count(world.path) == 4 and verify(world.path).ok
    monkeypatch.setattr(ledger, "_insert", real)
    assert ask(world) == 5 and verify(world.path).ok


def big_manifest() -> Manifest:
    return dataclasses.replace(manifest(), justification="x" * 200_000)


@pytest.mark.parametrize("spill", [False, True])
def test_a_process_killed_mid_append_leaves_no_partial_entry(world: World, spill: bool) -> None:
    # spill: a one-page cache forces SQLite to write uncommitted pages into the database file
    # before the commit, so the next reader must roll them back from the journal.
    size_before = world.path.stat().st_size
    pid = os.fork()
    if pid == 0:  # the child: die between the INSERT and the COMMIT, with no clean-up at all
        try:
            real_insert, real_connect = ledger._insert, ledger._connect

            def connect(path: Path, create: bool) -> sqlite3.Connection:
                conn = real_connect(path, create)
                conn.execute(f"PRAGMA cache_size = {1 if spill else 2000}")
                return conn

            def insert_then_die(conn: sqlite3.Connection, entry: Any) -> None:
                real_insert(conn, entry)
                grew = world.path.stat().st_size > size_before
                os._exit(7 if grew == spill else 4)

            ledger._insert = insert_then_die
            ledger._connect = connect
            request_exception(world.path, world.acme, big_manifest(), date(2026, 2, 1), now=T0)
        finally:
            os._exit(3)  # not reached unless the append never got to the insert
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7
    assert count(world.path) == 4 and verify(world.path).ok
    assert ask(world) == 5 and verify(world.path).ok


def test_a_full_disk_leaves_no_partial_entry(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ledger._connect

    def full_disk(path: Path, create: bool) -> sqlite3.Connection:
        conn = real(path, create)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # not one page more: SQLITE_FULL
        return conn

    monkeypatch.setattr(ledger, "_connect", full_disk)
    with pytest.raises(LedgerError, match=r"cannot append, nothing written: .*full"):
        request_exception(world.path, world.acme, big_manifest(), date(2026, 2, 1), now=T0)
    monkeypatch.setattr(ledger, "_connect", real)
    assert count(world.path) == 4 and verify(world.path).ok


def test_concurrent_appenders_never_fork_the_chain(world: World) -> None:
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for _ in range(3):
                    ask(world)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    result = verify(world.path)
    assert result.ok and result.entries == 13


# ---------------------------------------------------------------------------- files, export


def test_missing_and_foreign_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger here"):
        verify(tmp_path / "nothing.db")
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(LedgerError, match=r"not a patchguard ledger \(user_version 0\)"):
        verify(other)
    with pytest.raises(LedgerError, match="not a patchguard ledger"):
        append(other, HostKey.generate(), "policy", {}, now=T0)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError) as caught:
        verify(junk)
    assert "\n" not in str(caught.value) and str(junk) in str(caught.value)


def test_an_export_verifies_offline_and_its_tampering_is_found(full: World, tmp_path: Path) -> None:
    doc = export_json(full.path)
    out = tmp_path / "ledger.json"
    out.write_text(json.dumps(doc))
    assert verify(out).ok and verify(out).head == verify(full.path).head
    doc["entries"][7]["payload"] = doc["entries"][7]["payload"].replace("duplicate", "fine")
    out.write_text(json.dumps(doc))
    assert failure(out) == (8, "entry 8: hash does not match its contents")
    doc = export_json(full.path)
    doc["entries"][2], doc["entries"][3] = doc["entries"][3], doc["entries"][2]
    out.write_text(json.dumps(doc))
    assert failure(out) == (4, "entries skip from 2 to 4")


def test_report_counts_per_vendor_with_the_median_time_to_decision(full: World) -> None:
    request_exception(full.path, full.reviewer, manifest("Other Co"), date(2026, 2, 1),
                      now=T0 + timedelta(hours=7))  # fmt: skip
    [acme, other] = vendor_report(requests(full.path))
    assert (acme.vendor, acme.requests, acme.approvals, acme.denials) == ("Acme Security", 3, 1, 1)
    assert acme.median_to_decision == timedelta(hours=2)  # 1 h and 3 h
    assert (other.vendor, other.requests, other.median_to_decision) == ("Other Co", 1, None)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("PATCHGUARD_LEDGER", raising=False)
    yield


def test_default_path_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ledger.default_ledger_path() == Path("/var/lib/patchguard/ledger.db")
    monkeypatch.setenv("PATCHGUARD_LEDGER", "/tmp/x.db")
    assert ledger.default_ledger_path() == Path("/tmp/x.db")
