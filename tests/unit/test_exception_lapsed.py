"""exception-lapsed: a BPF program still running exactly as an exception declared it, after
that exception expired or was revoked, is named with the exception, how and when it lapsed.
The exceptions come from a real ledger in tmp_path (approved, expired, revoked, renewed by
the rules' own entries); the program is the ebpf surface's record of bpftool's pinned task
iterator (support/bpf_records.py), which scan calls no finding by itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from support.bpf_records import ITERATOR, bpf_program
from support.corpus import ledger
from support.witnesses import MANIFEST as BPFTOOL
from support.witnesses import PIN, World, world

from patchguard.findings import Disposition, Finding, Severity
from patchguard.guard.witnessed import witnessed_policy
from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import parse_manifest
from patchguard.policy.match import apply_exceptions, ledger_policy
from patchguard.signing import HostKey
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.ebpf import Attachment, BpfLink, BpfProgram, EbpfRecords

__all__ = ["world"]  # the fixture (tests/support/witnesses.py)

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
HOST = "web-1.example"
VENDOR = "Debian (bpftool packaging)"
# the witness tests' bpftool manifest, its vendor left to each test
MANIFEST = BPFTOOL.replace(f'vendor = "{VENDOR}"', 'vendor = "{vendor}"')
ITER = bpf_program(**ITERATOR)
LINK = BpfLink(91, "iter", 111, None, "task", (), (PIN,))


@dataclass(frozen=True)
class Ledger:
    """A ledger in tmp_path where Acme requests the iterator's manifest and Review decides."""

    path: Path
    owner: HostKey
    vendor: HostKey
    approver: HostKey

    def approved(
        self, expires: date, at: datetime = T0, scope: list[str] | None = None, vendor: str = ""
    ) -> int:
        text = MANIFEST.replace("{vendor}", vendor or VENDOR)
        manifest = parse_manifest(text.encode(), "bpftool.toml")
        asked = ops.request_exception(self.path, self.vendor, manifest, expires, scope, now=at)
        ops.decide(self.path, self.approver, asked.entry.seq, True, "reviewed", now=at)
        return asked.entry.seq

    def scanned(self, now: datetime, program: BpfProgram = ITER) -> list[Finding]:
        """The ebpf policy's findings for `program` (no finding of its own) at `now`."""
        live, lapsed = ops.exceptions_at(self.path, now)
        records = EbpfRecords.of((program, LINK))
        return apply_exceptions([], records, live, host=HOST, lapsed=lapsed)


@pytest.fixture
def book(tmp_path: Path) -> Ledger:
    keys = {n: HostKey.load_or_create(tmp_path / f"{n}.key") for n in ("o", "acme", "rev")}
    path = tmp_path / "ledger.db"
    ops.init_ledger(path, keys["o"], "Host Owner", now=T0)
    ops.grant_key(path, keys["o"], keys["acme"].public_key_bytes(), "Debian", [], now=T0)
    ops.grant_key(path, keys["o"], keys["rev"].public_key_bytes(), "Review", ["approve"], now=T0)
    return Ledger(path, keys["o"], keys["acme"], keys["rev"])


def kinds(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.technique, f.disposition.value) for f in found]


def test_an_expired_exception_names_the_program_still_running(book: Ledger) -> None:
    seq = book.approved(date(2026, 2, 1))
    assert kinds(book.scanned(T0)) == [("exception-match", "allowed")]
    (found,) = book.scanned(datetime(2026, 2, 1, tzinfo=UTC))  # its first unsanctioned moment
    assert (found.technique, found.severity, found.disposition) == (
        "exception-lapsed",
        Severity.LOW,
        Disposition.SUSPICIOUS,
    )
    assert found.subject == "prog 111 (list_tasks, tracing)"
    assert found.summary == (
        f"exception #{seq} (Debian (bpftool packaging), bpftool pinned task list "
        "7.1.0+6.1.192-3) expired on 2026-02-01; the program it declared still runs exactly as "
        "declared (task), and no exception in force covers it"
    )
    assert found.evidence == {
        "prog_id": 111,
        "name": "list_tasks",
        "exception": seq,
        "lapse": "expired",
        "date": "2026-02-01",
        "attach": ["task"],
    }


def test_a_recorded_expiry_is_the_same_lapse(book: Ledger) -> None:
    book.approved(date(2026, 2, 1))
    after = datetime(2026, 2, 3, tzinfo=UTC)
    unrecorded = book.scanned(after)
    assert len(ops.record_expiries(book.path, book.owner, now=after)) == 1
    assert book.scanned(after) == unrecorded and len(unrecorded) == 1


def test_a_revoked_exception_says_when_and_why(book: Ledger) -> None:
    seq = book.approved(date(2026, 6, 1))
    ops.revoke(book.path, book.approver, seq, "vendor withdrew it", now=T0 + timedelta(days=2))
    (found,) = book.scanned(T0 + timedelta(days=3))
    assert found.technique == "exception-lapsed"
    assert f"exception #{seq} (Debian (bpftool packaging), " in found.summary
    assert "was revoked on 2026-01-12T12:00:00+00:00: vendor withdrew it;" in found.summary
    assert (found.evidence["lapse"], found.evidence["date"]) == (
        "revoked",
        "2026-01-12T12:00:00+00:00",
    )


def test_a_renewed_exception_allows_it_and_nothing_lapsed_is_said(book: Ledger) -> None:
    book.approved(date(2026, 2, 1))
    renewed = book.approved(date(2026, 6, 1), at=T0 + timedelta(days=20))
    found = book.scanned(datetime(2026, 3, 1, tzinfo=UTC))
    assert kinds(found) == [("exception-match", "allowed")]
    assert found[0].evidence["exception"] == renewed


def test_an_exception_for_other_hosts_lapses_there_not_here(book: Ledger) -> None:
    book.approved(date(2026, 2, 1), scope=["db-*.example"])
    assert book.scanned(datetime(2026, 3, 1, tzinfo=UTC)) == []
    book.approved(date(2026, 2, 1), scope=["web-*.example"])
    assert kinds(book.scanned(datetime(2026, 3, 1, tzinfo=UTC))) == [
        ("exception-lapsed", "suspicious")
    ]


def test_a_program_unlike_the_lapsed_declaration_gets_nothing_new(book: Ledger) -> None:
    book.approved(date(2026, 2, 1))
    other = dataclasses.replace(ITER, helpers=("bpf_seq_printf", "bpf_send_signal"))
    assert book.scanned(datetime(2026, 3, 1, tzinfo=UTC), other) == []
    # the same program through a link that is pinned nowhere: its declared pin keeps it not
    unpinned = dataclasses.replace(ITER, attachments=(Attachment("link", "task", 92, "iter"),))
    assert book.scanned(datetime(2026, 3, 1, tzinfo=UTC), unpinned) == []


def test_of_two_lapsed_the_one_that_lapsed_last_is_named(book: Ledger) -> None:
    later = book.approved(date(2026, 4, 1))
    earlier = book.approved(date(2026, 2, 1), at=T0 + timedelta(days=1))
    (found,) = book.scanned(datetime(2026, 5, 1, tzinfo=UTC))
    assert found.evidence["exception"] == later and later < earlier
    ops.revoke(book.path, book.approver, earlier, "superseded", now=T0 + timedelta(days=2))
    (found,) = book.scanned(datetime(2026, 5, 1, tzinfo=UTC))
    assert found.evidence["exception"] == later  # revoked in January, expired in April


def test_denied_or_never_decided_requests_sanctioned_nothing_to_lapse(book: Ledger) -> None:
    manifest = parse_manifest(MANIFEST.replace("{vendor}", "Debian").encode(), "bpftool.toml")
    for approve in (False, None):
        asked = ops.request_exception(book.path, book.vendor, manifest, date(2026, 2, 1), now=T0)
        if approve is not None:
            ops.decide(book.path, book.approver, asked.entry.seq, approve, "no", now=T0)
    after = datetime(2026, 3, 1, tzinfo=UTC)
    assert ops.lapsed_exceptions(book.path, after) == [] and book.scanned(after) == []


def test_text_from_others_is_escaped(book: Ledger) -> None:
    seq = book.approved(date(2026, 6, 1), vendor="Acme\\\\Labs")  # TOML: one backslash
    ops.revoke(book.path, book.approver, seq, "forged\nline \u202e", now=T0 + timedelta(days=1))
    (found,) = book.scanned(T0 + timedelta(days=2))
    assert "(Acme\\\\Labs, " in found.summary  # shown doubled: unambiguous
    assert ": forged\\nline \\u202e;" in found.summary
    assert "\x1b" not in found.summary and "\n" not in found.summary


def test_each_approved_exception_is_live_or_lapsed_never_both(book: Ledger) -> None:
    first = book.approved(date(2026, 2, 1))
    second = book.approved(date(2026, 6, 1))
    ops.revoke(book.path, book.approver, second, "done", now=T0 + timedelta(days=40))
    for day in (1, 25, 45, 200):
        live, lapsed = ops.exceptions_at(book.path, T0 + timedelta(days=day))
        ids = sorted([r.id for r in live] + [x.request.id for x in lapsed])
        assert ids == [first, second], (day, live, lapsed)
    after_both = T0 + timedelta(days=200)
    assert [(x.request.id, x.how) for x in ops.lapsed_exceptions(book.path, after_both)] == [
        (first, "expired"),
        (second, "revoked"),
    ]


def test_the_ledger_policy_passes_the_lapsed_ones_through(tmp_path: Path) -> None:
    """ledger_policy at the real time, over a ledger whose exception ended at 00:00 UTC today
    (support.corpus.ledger, as the corpus tests use it)."""
    manifest = tmp_path / "bpftool.toml"
    manifest.write_text(MANIFEST.replace("{vendor}", VENDOR))
    state = SurfaceState("ebpf", EbpfRecords.of((ITER, LINK)))
    approved, why_not = ledger_policy(ledger(tmp_path / "approved", manifest, "Debian"))
    expired, _ = ledger_policy(ledger(tmp_path / "expired", manifest, "Debian", expired=True))
    assert approved is not None and expired is not None, why_not
    assert [f.technique for f in approved([], state)] == ["exception-match"]
    (found,) = expired([], state)
    assert found.technique == "exception-lapsed"
    assert found.evidence["date"] == datetime.now(UTC).date().isoformat()


def test_the_witness_gate_passes_lapsed_exceptions_on_unwitnessed(world: World) -> None:
    """A revocation narrows at once, witnessed or not; the exception it ended grants nothing,
    so the gate withholds nothing of it, and the program is named as lapsed."""
    seq = world.request()
    world.approve(seq)
    world.publish()
    world.collect(*world.witnesses)
    assert [r.id for r in world.gate().applied] == [seq]
    ops.revoke(world.log.path, world.approver, seq, "withdrawn")
    gated = world.gate()  # the revocation is in no checkpoint yet
    assert gated.applied == () and gated.findings == ()
    assert [(x.request.id, x.how) for x in gated.lapsed] == [(seq, "revoked")]
    state = SurfaceState("ebpf", EbpfRecords.of((ITER, LINK)))
    # as a gated scan and the guard apply it (guard/witnessed.py)
    policy, _, _ = witnessed_policy(world.log.path, world.settings(), fresh=True)
    assert policy is not None
    (found,) = policy([], state)
    assert found.technique == "exception-lapsed" and ": withdrawn;" in found.summary
