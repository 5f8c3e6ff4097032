"""Bearer tokens: made once and printed once; the database keeps only their SHA-256.

An operator token opens the operator API and pages. An enrol token enrols hosts: it has a
number of uses (1 unless `--uses N`) and may expire; a used-up or expired token is refused.
The use is taken by one conditional UPDATE, so two server processes cannot both spend the
last use.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from patchguard.server.db import Token
from patchguard.server.errors import Refused

PREFIX = "pgt_"
_SHAPE = re.compile(r"\Apgt_[A-Za-z0-9_-]{43}\Z")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    session: Session,
    role: str,
    now: datetime,
    uses: int | None = None,
    expires_at: datetime | None = None,
    label: str = "",
) -> str:
    """A new token (returned once, never stored); enrol tokens default to one use."""
    token = PREFIX + secrets.token_urlsafe(32)
    if role == "enrol" and uses is None:
        uses = 1
    session.add(
        Token(
            token_hash=token_hash(token),
            role=role,
            uses_left=uses,
            expires_at=expires_at,
            created_at=now,
            label=label,
        )
    )
    return token


def bearer(header: str | None) -> str:
    """The token in an `Authorization: Bearer ...` header, or Refused(401)."""
    if not header:
        raise Refused(401, "missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _SHAPE.match(token):
        raise Refused(401, "the Authorization header is not a patchguard bearer token")
    return token


def _lookup(session: Session, token: str, role: str) -> Token:
    found = session.scalars(select(Token).where(Token.token_hash == token_hash(token)))
    row = found.one_or_none()
    if row is None:
        raise Refused(401, "unknown token")
    if row.role != role:
        raise Refused(403, f"this is an {row.role} token; this needs an {role} token")
    return row


def _usable(row: Token, now: datetime) -> None:
    if row.expires_at is not None and row.expires_at <= now:
        raise Refused(403, f"the token expired at {row.expires_at.isoformat()}")
    if row.uses_left is not None and row.uses_left <= 0:
        raise Refused(403, "the token has been used up")


def check_operator(session: Session, header: str | None, now: datetime) -> Token:
    row = _lookup(session, bearer(header), "operator")
    _usable(row, now)
    return row


def check_enrol(session: Session, header: str | None, now: datetime, again: bool) -> Token:
    """The enrol token if it can still enrol a host (nothing spent). `again`: the host is
    enrolled already (its answer was lost); a used-up token still says it again, an expired
    one does not."""
    row = _lookup(session, bearer(header), "enrol")
    if again and (row.expires_at is None or row.expires_at > now):
        return row
    _usable(row, now)
    return row


def spend_enrol(session: Session, row: Token, now: datetime) -> None:
    """Take one use of an enrol token, or Refused(403) if another request took the last."""
    if row.uses_left is None:
        return
    taken = session.execute(
        update(Token)
        .where(Token.id == row.id, Token.uses_left > 0)
        .where(or_(Token.expires_at.is_(None), Token.expires_at > now))
        .values(uses_left=Token.uses_left - 1)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
        raise Refused(403, "the token has been used up")
