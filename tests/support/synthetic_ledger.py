"""A valid exception ledger of any length, made in memory for the server-page tests and the
page bench: real keys, real signatures, every entry accepted by the ledger's rules (each is
applied to a LedgerState as it is sealed), so it verifies like one built with the CLI, in a
fraction of the time (the CLI replays the whole ledger on every append)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from patchguard.policy.chain import COLUMNS, GENESIS_HASH, Entry, seal
from patchguard.policy.manifest import Manifest, parse_manifest
from patchguard.policy.rules import LedgerState
from patchguard.server.db import LedgerEntry
from patchguard.signing import HostKey

MANIFEST = (
    Path(__file__).resolve().parents[2] / "src/patchguard/policy/manifests/bpftrace-killcount.toml"
)
OWNER = "Host Owner"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def manifest_for(vendor: str) -> Manifest:
    """The shipped bpftrace manifest under another vendor's name (TOML-quoted)."""
    text = MANIFEST.read_text()
    quoted = vendor.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace('vendor = "Debian (bpftrace packaging)"', f'vendor = "{quoted}"')
    return parse_manifest(text.encode(), f"{vendor} manifest")


@dataclass
class Builder:
    keys: Path  # a directory for the key files
    entries: list[Entry] = field(default_factory=list)
    state: LedgerState = field(default_factory=LedgerState)
    clock: datetime = T0

    def key(self, name: str) -> HostKey:
        return HostKey.load_or_create(self.keys / f"{name}.key")

    def add(self, kind: str, key: HostKey, payload: dict[str, Any], subject: int | None) -> Entry:
        seq = len(self.entries) + 1
        prev = self.entries[-1].hash if self.entries else GENESIS_HASH
        entry = seal(seq, self.clock, kind, key, subject, payload, prev)
        self.state.apply(entry)  # RuleError here is a bug in the builder
        self.entries.append(entry)
        return entry

    def grant(self, by: HostKey, key: HostKey, owner: str, roles: Sequence[str]) -> None:
        payload = {
            "policy": "key",
            "fingerprint": key.fingerprint(),
            "public_key": key.public_key_bytes().hex(),
            "owner": owner,
            "roles": sorted(roles),
        }
        self.add("policy", by, payload, None)

    def request(self, key: HostKey, manifest: Manifest) -> int:
        expires = (self.clock + timedelta(days=300)).date().isoformat()
        payload = {
            "manifest": manifest.to_dict(),
            "manifest_sha256": manifest.sha256,
            "scope": "all",
            "expires": expires,
        }
        seq = len(self.entries) + 1
        return self.add("request", key, payload, seq).seq

    def decide(self, key: HostKey, request: int, approve: bool, reason: str) -> None:
        self.add("approve" if approve else "deny", key, {"reason": reason}, request)

    def rows(self) -> list[tuple[object, ...]]:
        return [tuple(getattr(e, name) for name in COLUMNS) for e in self.entries]


VENDORS = ("Acme Security", OWNER, "Falco Project", "<script>alert(1)</script> <b>Corp</b>")


def build(keys: Path, total: int, vendors: Sequence[str] = VENDORS) -> Builder:
    """About `total` entries (at least the key grants): requests from each vendor in turn,
    each decided by the review board after a wait that grows with the vendor's index."""
    b = Builder(keys)
    owner, board = b.key("owner"), b.key("board")
    b.grant(owner, owner, OWNER, ["policy"])
    b.grant(owner, board, "Review Board", ["approve"])
    vendor_keys = [b.key(f"vendor{i}") for i in range(len(vendors))]
    manifests = [manifest_for(v) for v in vendors]
    for key, name in zip(vendor_keys, vendors, strict=True):
        b.grant(owner, key, name, [])
    for n in _cycle(len(vendors)):
        if len(b.entries) + 2 > total:
            break
        b.clock += timedelta(minutes=1)
        request = b.request(vendor_keys[n], manifests[n])
        b.clock += timedelta(hours=n + 1, minutes=len(b.entries) % 7)
        b.decide(board, request, approve=len(b.entries) % 3 != 0, reason=f"review {request}")
    return b


def _cycle(n: int) -> Iterator[int]:
    i = 0
    while True:
        yield i % n
        i += 1


def store(session: Session, rows: Sequence[tuple[object, ...]], chunk: int = 5000) -> None:
    """Insert ledger rows into the server's table as they are (no checks: tests tamper)."""
    for start in range(0, len(rows), chunk):
        batch = [dict(zip(COLUMNS, row, strict=True)) for row in rows[start : start + chunk]]
        session.execute(insert(LedgerEntry), batch)
