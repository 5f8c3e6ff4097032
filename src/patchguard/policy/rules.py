"""The ledger's rules, replayed entry by entry: the state (keys, requests, their decisions) is
whatever the entries make it, and nothing else, so a policy change that is not in the ledger
has no effect. The same `apply` refuses a new entry on append and flags a bad one on verify.

Keys and roles are ledger entries too (kind "policy"): entry 1 registers the ledger owner's
key with the "policy" role; only "policy" keys register keys or change the expiry maximum;
only "approve" keys decide, and never for their own vendor (docs/manifest.md). A log-key
rotation is a "policy" entry too (`"policy": "log_key"`): besides the entry's own signature it
carries the current log key's signature naming its successor (docs/transparency.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from typing import Any

from patchguard.policy.chain import KINDS, Entry
from patchguard.policy.manifest import Manifest, ManifestError, manifest_from_dict
from patchguard.policy.transparency import note
from patchguard.signing import fingerprint_of, verify_signature

ROLES = ("approve", "policy")
DEFAULT_MAX_EXPIRY_DAYS = 365
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_SELECTOR = re.compile(r"\S+\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class RuleError(Exception):
    """An entry the rules do not allow; str() is one line."""


@dataclass(frozen=True)
class KeyGrant:
    fingerprint: str
    public_key: str  # hex
    owner: str  # the vendor or organisation the key belongs to
    roles: frozenset[str]


@dataclass(frozen=True)
class Request:
    id: int  # the seq of the request entry: "exception #12"
    requested_at: datetime
    requester: str  # fingerprint of the requesting key
    manifest: Manifest
    manifest_sha256: str
    scope: tuple[str, ...] | None  # host selectors; None: all hosts
    expires: date  # the exception ends at 00:00 UTC on this date
    status: str = "pending"  # pending, approved, denied, revoked, expired
    decision: str | None = None  # approved or denied, kept after a revocation or expiry
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str | None = None  # of the last decision, revocation or expiry

    @property
    def vendor(self) -> str:
        return self.manifest.vendor

    @property
    def expires_at(self) -> datetime:
        return datetime.combine(self.expires, time(0), UTC)

    def status_at(self, now: datetime) -> str:
        """The status at `now`: an approved or pending request past its expiry is expired."""
        if self.status in ("approved", "pending") and now >= self.expires_at:
            return "expired"
        return self.status

    def live(self, now: datetime) -> bool:
        return self.status_at(now) == "approved"


def _same_owner(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def _text(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RuleError(f"payload.{name} must be a non-empty string")
    return value


@dataclass
class LedgerState:
    keys: dict[str, KeyGrant] = field(default_factory=dict)
    requests: dict[int, Request] = field(default_factory=dict)
    max_expiry_days: int = DEFAULT_MAX_EXPIRY_DAYS
    log_vkey: str | None = None  # the log key the last rotation announced (None: none yet)

    def owner_of(self, fingerprint: str) -> str | None:
        grant = self.keys.get(fingerprint)
        return grant.owner if grant else None

    def may(self, fingerprint: str, role: str) -> bool:
        grant = self.keys.get(fingerprint)
        return grant is not None and role in grant.roles

    def live(self, now: datetime) -> list[Request]:
        return [r for r in self.requests.values() if r.live(now)]

    def apply(self, entry: Entry) -> str:
        """Check `entry` against the rules, then take it in; returns a one-line description
        ("exception #3 approved for Acme: ..."). RuleError, and no change, if not allowed."""
        if entry.kind not in KINDS:
            raise RuleError(f"unknown kind {entry.kind!r}")
        if not self.keys and entry.kind != "policy":
            raise RuleError("the first entry must register the ledger owner's key")
        handler = getattr(self, f"_{entry.kind}")
        text: str = handler(entry, entry.data)
        return text

    def _policy(self, entry: Entry, p: dict[str, Any]) -> str:
        if entry.subject is not None:
            raise RuleError("a policy entry has no subject")
        if self.keys and not self.may(entry.actor, "policy"):
            raise RuleError(f"key {entry.actor} may not change policy (it lacks the policy role)")
        what = p.get("policy")
        if not self.keys and what != "key":
            raise RuleError("the first entry must register the ledger owner's key")
        if what == "max_expiry_days":
            days = p.get("days")
            if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
                raise RuleError("payload.days must be a number of days from 1 to 3650")
            self.max_expiry_days = days
            return f"policy: exceptions may last at most {days} days (by {entry.actor})"
        if what == "log_key":
            return self._log_key(entry, p)
        if what != "key":
            raise RuleError(f"unknown policy change {what!r}")
        grant = self._grant(p)
        if not self.keys and (grant.fingerprint != entry.actor or "policy" not in grant.roles):
            raise RuleError("the first entry must register its own signer with the policy role")
        keys = {**self.keys, grant.fingerprint: grant}
        if not any("policy" in g.roles for g in keys.values()):
            raise RuleError("this would leave no key that may change policy")
        self.keys = keys
        roles = ", ".join(sorted(grant.roles)) or "no roles"
        return (
            f"policy: key {grant.fingerprint} belongs to {grant.owner} ({roles}; by {entry.actor})"
        )

    def _log_key(self, entry: Entry, p: dict[str, Any]) -> str:
        """A log-key rotation: the current log key (`from`) signs the successor (`to`)."""
        old, new = _log_vkey(p, "from"), _log_vkey(p, "to")
        if old.name != new.name or old == new:
            raise RuleError("payload.to must be another key under the log's name")
        if self.log_vkey is not None and old.vkey != self.log_vkey:
            raise RuleError(f"payload.from is not the log's key ({self.log_vkey})")
        signature = p.get("log_signature")
        raw = _b64(signature, "payload.log_signature")
        if not verify_signature(old.public_key, rotation_statement(old.vkey, new.vkey), raw):
            raise RuleError("payload.log_signature is not the old log key's signature of it")
        self.log_vkey = new.vkey
        return f"policy: the log's key is now {new.vkey}, after {old.vkey} (by {entry.actor})"

    @staticmethod
    def _grant(p: dict[str, Any]) -> KeyGrant:
        public_key, fingerprint = _text(p, "public_key"), _text(p, "fingerprint")
        try:
            raw = bytes.fromhex(public_key)
        except ValueError:
            raw = b""
        if len(raw) != 32 or fingerprint_of(raw) != fingerprint:
            raise RuleError("payload.fingerprint is not the fingerprint of payload.public_key")
        roles = p.get("roles")
        if not isinstance(roles, list) or not set(roles) <= set(ROLES) or sorted(roles) != roles:
            raise RuleError(f"payload.roles must be a sorted list of {', '.join(ROLES)}")
        return KeyGrant(fingerprint, public_key, _text(p, "owner"), frozenset(roles))

    def _request(self, entry: Entry, p: dict[str, Any]) -> str:
        if entry.subject != entry.seq:
            raise RuleError("a request's subject must be its own number")
        try:
            manifest = manifest_from_dict(p.get("manifest"), f"request {entry.seq} manifest")
        except ManifestError as exc:
            raise RuleError(str(exc)) from None
        digest = _text(p, "manifest_sha256")
        if not _SHA256.match(digest):
            raise RuleError("payload.manifest_sha256 must be 64 lowercase hex digits")
        expires = _text(p, "expires")
        if not _DATE.match(expires):
            raise RuleError(f"expiry {expires!r} is not a date (YYYY-MM-DD)")
        try:
            until = date.fromisoformat(expires)
        except ValueError:
            raise RuleError(f"expiry {expires!r} is not a date (YYYY-MM-DD)") from None
        made = entry.when.astimezone(UTC)
        if datetime.combine(until, time(0), UTC) <= made:
            raise RuleError(f"expiry {expires} is not in the future")
        if (until - made.date()).days > self.max_expiry_days:
            raise RuleError(f"expiry {expires} is more than {self.max_expiry_days} days away")
        scope = p.get("scope")
        if scope != "all" and (
            not isinstance(scope, list)
            or not scope
            or not all(isinstance(s, str) and _SELECTOR.match(s) for s in scope)
            or len(set(scope)) != len(scope)
        ):
            raise RuleError('payload.scope must be "all" or a list of distinct host selectors')
        hosts = None if scope == "all" else tuple(scope)
        self.requests[entry.seq] = Request(
            entry.seq, made, entry.actor, manifest, digest, hosts, until
        )
        where = "all hosts" if hosts is None else ", ".join(hosts)
        return (
            f"exception #{entry.seq} requested for {manifest.vendor} ({manifest.product} "
            f"{manifest.version}) on {where} until {expires} (by {entry.actor})"
        )

    def _subject(self, entry: Entry) -> Request:
        request = self.requests.get(entry.subject) if entry.subject is not None else None
        if request is None:
            raise RuleError(f"there is no request #{entry.subject}")
        return request

    def _decide(self, entry: Entry, p: dict[str, Any], verdict: str) -> str:
        request, reason = self._subject(entry), _text(p, "reason")
        status = request.status_at(entry.when)
        if status != "pending":
            raise RuleError(f"request #{request.id} is {status}, not pending")
        # Neutrality first: it is the refusal that explains the most.
        owner, requester_owner = self.owner_of(entry.actor), self.owner_of(request.requester)
        if entry.actor == request.requester:
            raise RuleError(f"key {entry.actor} made request #{request.id}: it cannot decide it")
        if owner is not None and (
            _same_owner(owner, request.vendor)
            or (requester_owner is not None and _same_owner(owner, requester_owner))
        ):
            raise RuleError(
                f"key {entry.actor} belongs to {owner}, the requesting vendor: it cannot decide it"
            )
        if not self.may(entry.actor, "approve"):
            raise RuleError(
                f"key {entry.actor} may not decide requests (it lacks the approve role)"
            )
        self.requests[request.id] = replace(
            request,
            status=verdict,
            decision=verdict,
            decided_at=entry.when,
            decided_by=entry.actor,
            reason=reason,
        )
        return (
            f"exception #{request.id} {verdict} for {request.vendor}: {reason} (by {entry.actor})"
        )

    def _approve(self, entry: Entry, p: dict[str, Any]) -> str:
        return self._decide(entry, p, "approved")

    def _deny(self, entry: Entry, p: dict[str, Any]) -> str:
        return self._decide(entry, p, "denied")

    def _revoke(self, entry: Entry, p: dict[str, Any]) -> str:
        request, reason = self._subject(entry), _text(p, "reason")
        status = request.status_at(entry.when)
        if status != "approved":
            raise RuleError(f"request #{request.id} is {status}: only a live exception is revoked")
        if entry.actor != request.requester and not self.may(entry.actor, "approve"):
            raise RuleError(
                f"key {entry.actor} may not revoke (not the requester, no approve role)"
            )
        self.requests[request.id] = replace(request, status="revoked", reason=reason)
        return f"exception #{request.id} revoked for {request.vendor}: {reason} (by {entry.actor})"

    def _expire(self, entry: Entry, p: dict[str, Any]) -> str:
        # Anyone may record an expiry: it only writes down what the date already decided.
        request = self._subject(entry)
        if request.status not in ("approved", "pending") or entry.when < request.expires_at:
            raise RuleError(f"request #{request.id} has not expired ({request.status})")
        self.requests[request.id] = replace(request, status="expired", reason="expired")
        return f"exception #{request.id} expired for {request.vendor} on {request.expires}"


ROTATION_FORMAT = "patchguard.log-key/1"


def rotation_statement(old: str, new: str) -> bytes:
    """What the old log key signs to name its successor (both verifier keys)."""
    return f"{ROTATION_FORMAT}\n{old}\n{new}\n".encode()


def _log_vkey(p: dict[str, Any], name: str) -> note.Verifier:
    value = p.get(name)
    if not isinstance(value, str):
        raise RuleError(f"payload.{name} must be a log verifier key")
    try:
        verifier = note.parse_vkey(value)
    except note.NoteError as exc:
        raise RuleError(f"payload.{name}: {exc}") from None
    if verifier.kind != note.ED25519 or verifier.vkey != value:
        raise RuleError(f"payload.{name} must be a log key (type 0x01) in its one spelling")
    return verifier


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise RuleError(f"{what} must be base64")
    try:
        return note.b64decode(value, what)
    except note.NoteError as exc:
        raise RuleError(str(exc)) from None


def copy_state(state: LedgerState) -> LedgerState:
    """A state to go on applying entries to without changing `state` (its records are frozen:
    apply replaces them in the dicts, so fresh dicts suffice)."""
    return replace(state, keys=dict(state.keys), requests=dict(state.requests))
