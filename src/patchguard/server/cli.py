"""`patchguard server ...`: run the fleet server, migrate its database, make tokens, import
the exception ledger. `register(subparsers)` adds the group; each command stores its handler
as `args.handler` (exit 0 done, 2 an error printed as one line). The server stack is imported
only here, so `patchguard scan` does not pay for it."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

from patchguard.arguments import path as path_arg

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (--help builds this parser)
if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy import Engine

EXIT_OK, EXIT_ERROR = 0, 2
DB_HELP = "database URL (default sqlite:////var/lib/patchguard/server.db; PostgreSQL: "
DB_HELP += "postgresql+psycopg://user@/dbname?host=/run/postgresql)"
_DURATION = re.compile(r"\A(\d{1,6})([mhd])\Z")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class UsageError(Exception):
    """A bad argument value, caught before anything is written."""


def expiry(text: str | None, now: datetime) -> datetime | None:
    """`--expires`: a duration (30m, 12h, 7d) or an ISO date or time (UTC unless given)."""
    from datetime import UTC, datetime, timedelta

    if text is None:
        return None
    match = _DURATION.match(text)
    if match:
        return now + timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--expires: {text!r} is neither a duration (7d) nor a date") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _url(args: argparse.Namespace) -> str:
    from patchguard.server.db import DEFAULT_URL

    url: str = args.db or DEFAULT_URL
    from pathlib import Path

    if url.startswith("sqlite:///"):  # the default's directory may not exist yet
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) != ":memory:":
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return url


def _migrated(args: argparse.Namespace) -> Engine:
    from patchguard.server.db import engine
    from patchguard.server.migrate import migrate

    bound = engine(_url(args))
    migrate(bound)
    return bound


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from patchguard.server.app import LOG_FORMAT, Settings

    host, port = _listen(args.listen)
    settings = Settings(
        db_url=_url(args),
        key_path=args.key,
        missed_heartbeats=args.missed_heartbeats,
        silence_check_seconds=args.silence_check,
    )
    _migrated(args).dispose()
    os.environ.update(settings.to_env())
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    uvicorn.run(
        "patchguard.server.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        access_log=False,
        timeout_keep_alive=65,  # longer than a proxy's (nginx: 60 s), which then closes first
        log_level="info",
    )
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    _migrated(args).dispose()
    print(f"database at the newest schema: {_redacted(_url(args))}")
    return EXIT_OK


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _token_create(args: argparse.Namespace) -> int:
    from patchguard.server.auth import create_token
    from patchguard.server.db import session_factory, transaction, utcnow

    now = utcnow()
    expires = expiry(args.expires, now)
    if args.uses is not None and args.uses < 1:
        raise UsageError("--uses must be at least 1")
    bound = _migrated(args)
    try:
        with transaction(session_factory(bound)) as session:
            token = create_token(session, args.role, now, args.uses, expires, args.label or "")
    finally:
        bound.dispose()
    print(token)
    uses = args.uses if args.uses is not None else (1 if args.role == "enrol" else None)
    limits = [f"{uses} use(s)" if uses is not None else "unlimited uses"]
    limits.append(f"expires {expires.isoformat()}" if expires else "never expires")
    print(
        f"{args.role} token: {', '.join(limits)}; shown once, only its hash is stored",
        file=sys.stderr,
    )
    return EXIT_OK


def _ledger_import(args: argparse.Namespace) -> int:
    from patchguard.server.db import session_factory, transaction
    from patchguard.server.ledger import import_ledger

    bound = _migrated(args)
    try:
        with transaction(session_factory(bound)) as session:
            added, held = import_ledger(session, args.path)
    finally:
        bound.dispose()
    print(f"{args.path}: verified; {added} new entries, the server holds {held}")
    return EXIT_OK


def _ledger_cosigned(args: argparse.Namespace) -> int:
    from patchguard.server.db import session_factory, transaction
    from patchguard.server.ledger import add_cosignatures

    bound = _migrated(args)
    try:
        with transaction(session_factory(bound)) as session:
            added, held, size = add_cosignatures(session, args.path)
    finally:
        bound.dispose()
    print(f"{args.path}: checkpoint {size}: {added} new cosignatures, {held} served")
    return EXIT_OK


def _prune(args: argparse.Namespace) -> int:
    from patchguard.server.db import session_factory, transaction, utcnow
    from patchguard.server.retention import prune

    if args.days < 1:
        raise UsageError("--days must be at least 1")
    bound = _migrated(args)
    try:
        with transaction(session_factory(bound)) as session:
            done = prune(session, utcnow(), args.days)
    finally:
        bound.dispose()
    print(
        f"deleted {done.reports} reports and {done.findings} findings older than {args.days} days"
    )
    return EXIT_OK


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import ArgumentError, SQLAlchemyError

        from patchguard.policy.ledger import LedgerError
        from patchguard.signing import KeyFileError

        try:
            return handler(args)
        except (UsageError, KeyFileError, LedgerError) as exc:
            print(f"patchguard: {exc}", file=sys.stderr)
        except ArgumentError as exc:
            print(f"patchguard: --db: {exc}", file=sys.stderr)
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            print(f"patchguard: database {_redacted(_url(args))}: {first}", file=sys.stderr)
        except OSError as exc:
            print(f"patchguard: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        except KeyboardInterrupt:
            pass
        return EXIT_ERROR

    return run


def _db(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--db", default=default, metavar="URL", help=DB_HELP)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = sub.add_parser("server", help="the fleet server (run, migrate, tokens, ledger)")
    _db(server)
    server.add_argument("--listen", default="127.0.0.1:8470", metavar="HOST:PORT")
    server.add_argument(
        "--key",
        type=path_arg,
        default="/var/lib/patchguard/server.key",
        metavar="PATH",
        help="the server's signing key, created on first use",
    )
    server.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    server.add_argument(
        "--missed-heartbeats",
        type=int,
        default=3,
        metavar="K",
        help="a host that misses K heartbeats is silent (default 3)",
    )
    server.add_argument(
        "--silence-check",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how often to look for silent hosts (default 15)",
    )
    server.set_defaults(handler=_guarded(_serve))
    actions = server.add_subparsers(dest="server_command")

    migrate = actions.add_parser("migrate", help="bring the database to the newest schema")
    _db(migrate, argparse.SUPPRESS)
    migrate.set_defaults(handler=_guarded(_migrate))

    token = actions.add_parser("token", help="bearer tokens")
    token_actions = token.add_subparsers(dest="token_command", required=True)
    create = token_actions.add_parser("create", help="make a token and print it once")
    create.add_argument("--role", required=True, choices=("operator", "enrol"))
    create.add_argument("--uses", type=int, default=None, help="enrolments (enrol default 1)")
    create.add_argument("--expires", metavar="WHEN", help="7d, 12h, 30m or an ISO date/time")
    create.add_argument("--label", help="a note kept beside the hash")
    _db(create, argparse.SUPPRESS)
    create.set_defaults(handler=_guarded(_token_create))

    prune = actions.add_parser("prune", help="delete reports and findings past the retention")
    prune.add_argument("--days", type=int, default=90, help="keep this many days (default 90)")
    _db(prune, argparse.SUPPRESS)
    prune.set_defaults(handler=_guarded(_prune))

    ledger = actions.add_parser("ledger", help="the exception ledger the server serves")
    ledger_actions = ledger.add_subparsers(dest="ledger_command", required=True)
    load = ledger_actions.add_parser("import", help="verify a ledger and add its new entries")
    load.add_argument("path", type=path_arg, help="ledger.db or a `ledger export` JSON file")
    _db(load, argparse.SUPPRESS)
    load.set_defaults(handler=_guarded(_ledger_import))
    cosigned = ledger_actions.add_parser(
        "cosigned", help="serve a checkpoint's witness cosignatures (`ledger witness-collect`)"
    )
    cosigned.add_argument("path", type=path_arg, help="the cosigned checkpoint file")
    _db(cosigned, argparse.SUPPRESS)
    cosigned.set_defaults(handler=_guarded(_ledger_cosigned))
