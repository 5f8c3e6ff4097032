"""`patchguard exceptions ...` and `patchguard ledger ...`: thin calls into the policy layer.

`register(subparsers)` adds both command groups to the main parser; every command stores its
handler as `args.policy_handler`, which takes the parsed args and returns the exit code:
0 done (or the ledger verifies), 1 the ledger does not verify, 2 an error, printed as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from patchguard.policy.transparency import cli as transparency_cli

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (--help builds this parser)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from patchguard.signing import HostKey

EXIT_OK, EXIT_BAD_LEDGER, EXIT_ERROR = 0, 1, 2
Handler = Callable[[argparse.Namespace], int]
ROLES = ("approve", "policy")  # policy/rules.py's (a test holds them equal): --help needs no rules


class UsageError(Exception):
    """A bad argument value, caught before anything is written."""


def register_witness(subparsers: Any) -> None:
    """Add `witness` to the main parser's subparsers."""
    transparency_cli.register_witness(subparsers)


def _ledger(args: argparse.Namespace) -> Path:
    from pathlib import Path

    from patchguard.policy.ledger import default_ledger_path

    return Path(args.ledger) if args.ledger else default_ledger_path()


def _key(args: argparse.Namespace) -> HostKey:
    from pathlib import Path

    from patchguard.signing import HostKey

    return HostKey.load(Path(args.key))  # never created here: a mistyped path is an error


def _print(text: str) -> None:
    print(text, flush=True)


def _request(args: argparse.Namespace) -> int:
    import re
    from datetime import date
    from pathlib import Path

    from patchguard.policy import exceptions as ops
    from patchguard.policy.manifest import check_request_size, load_manifest
    from patchguard.text import visible

    if not re.match(r"\d{4}-\d{2}-\d{2}\Z", args.expires):
        raise UsageError(f"--expires: {args.expires!r} is not a date (YYYY-MM-DD)")
    try:
        expires = date.fromisoformat(args.expires)
    except ValueError:
        raise UsageError(f"--expires: {args.expires!r} is not a date (YYYY-MM-DD)") from None
    manifest = load_manifest(Path(args.manifest))
    check_request_size(manifest, args.manifest)  # refused here, before the ledger's lock
    done = ops.request_exception(_ledger(args), _key(args), manifest, expires, args.scope)
    _print(visible(done.description))
    return EXIT_OK


def _decision(approve: bool) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from patchguard.policy import exceptions as ops
        from patchguard.text import visible

        done = ops.decide(_ledger(args), _key(args), args.id, approve, args.reason)
        _print(visible(done.description))
        return EXIT_OK

    return handler


def _revoke(args: argparse.Namespace) -> int:
    from patchguard.policy import exceptions as ops
    from patchguard.text import visible

    _print(visible(ops.revoke(_ledger(args), _key(args), args.id, args.reason).description))
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from patchguard.policy import exceptions as ops
    from patchguard.text import visible

    now = datetime.now(UTC)
    for r in ops.requests(_ledger(args)):
        m = r.manifest
        scope = "all hosts" if r.scope is None else ",".join(r.scope)
        fields = (m.vendor, f"{m.product} {m.version}", scope, f"expires {r.expires}")
        _print("\t".join((f"#{r.id}", r.status_at(now), *map(visible, fields))))
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    from patchguard.policy import exceptions as ops
    from patchguard.text import visible

    _print(visible(ops.init_ledger(_ledger(args), _key(args), args.owner).description))
    return EXIT_OK


def _key_add(args: argparse.Namespace) -> int:
    from patchguard.policy import exceptions as ops
    from patchguard.text import visible

    try:
        public_key = bytes.fromhex(args.public_key)
    except ValueError:
        public_key = b""
    if len(public_key) != 32:
        raise UsageError("PUBLIC_KEY: expected 64 hex digits (`patchguard ledger key show`)")
    roles = args.role or []
    done = ops.grant_key(_ledger(args), _key(args), public_key, args.owner, roles)
    _print(visible(done.description))
    return EXIT_OK


def _key_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from patchguard.signing import HostKey

    # --create is the one way to make a new actor key: everywhere else a missing key is a typo
    key = HostKey.load_or_create(Path(args.key)) if args.create else _key(args)
    _print(f"fingerprint {key.fingerprint()}\npublic key {key.public_key_bytes().hex()}")
    return EXIT_OK


def _max_expiry(args: argparse.Namespace) -> int:
    from patchguard.policy import exceptions as ops
    from patchguard.text import visible

    _print(visible(ops.set_max_expiry(_ledger(args), _key(args), args.days).description))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from patchguard.policy.ledger import verify
    from patchguard.text import visible

    path = _ledger(args)
    result = verify(path, args.root, args.head)
    if not result.ok:
        print(f"patchguard: {path}: does not verify: {visible(result.reason)}", file=sys.stderr)
        return EXIT_BAD_LEDGER
    if result.entries == 0:  # a ledger emptied or truncated to 0 bytes is not "0 verify"
        return _empty(path, getattr(args, "new", False))
    _print(f"{path}: {result.entries} entries verify; head {result.head}")
    return EXIT_OK


def _empty(path: Path, new: bool) -> int:
    if new:
        _print(f"{path}: empty, as a new ledger (no entries)")
        return EXIT_OK
    size = path.stat().st_size if path.suffix != ".json" else None
    what = "0 bytes" if size == 0 else "no entries"
    print(
        f"patchguard: {path}: the ledger is empty ({what}): nothing verifies; "
        "pass --new only for a ledger meant to be new",
        file=sys.stderr,
    )
    return EXIT_BAD_LEDGER


def _show(args: argparse.Namespace) -> int:
    import json

    from patchguard.policy.ledger import export_json, read_rows, replay
    from patchguard.text import visible

    path = _ledger(args)
    if args.json:
        _print(json.dumps(export_json(path), indent=2))
        return EXIT_OK
    loaded = replay(read_rows(path))
    for entry, line in zip(loaded.entries, loaded.descriptions, strict=True):
        _print(f"{entry.seq}\t{visible(entry.time)}\t{visible(entry.kind)}\t{visible(line)}")
    if not loaded.result.ok:
        reason = visible(loaded.result.reason)
        print(f"patchguard: {path}: does not verify: {reason}", file=sys.stderr)
        return EXIT_BAD_LEDGER
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from patchguard.policy import exceptions as ops
    from patchguard.policy.ledger import load
    from patchguard.text import visible

    stats = ops.vendor_report(load(_ledger(args)).state.requests.values())
    _print("vendor\trequests\tapproved\tdenied\tmedian time to decision")
    for s in stats:
        median = ops.duration_text(s.median_to_decision)
        _print(f"{visible(s.vendor)}\t{s.requests}\t{s.approvals}\t{s.denials}\t{median}")
    return EXIT_OK


def _expected_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line: imported when one is raised, not before."""
    from patchguard.policy.ledger import LedgerError
    from patchguard.policy.manifest import ManifestError
    from patchguard.safe_read import InputError
    from patchguard.signing import KeyFileError

    return (LedgerError, ManifestError, KeyFileError, InputError)


def _guarded(handler: Handler) -> Handler:
    """Every expected failure becomes one line on stderr and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Exception as exc:
            if not isinstance(exc, (UsageError, *_expected_errors())):
                raise
            from patchguard.text import visible

            print(f"patchguard: {visible(exc)}", file=sys.stderr)
            return EXIT_ERROR

    return run


def _add(
    group: Any, name: str, handler: Handler, help_text: str, key: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text)
    parser.add_argument(
        "--ledger",
        metavar="PATH",
        help="the ledger (default $PATCHGUARD_LEDGER, else "
        "/var/lib/patchguard/ledger.db; a .json path reads an export)",
    )
    if key:
        parser.add_argument("--key", required=True, metavar="KEY", help="signing key (PEM file)")
    parser.set_defaults(policy_handler=_guarded(handler))
    return parser


def register(subparsers: Any) -> None:
    """Add `exceptions` and `ledger` to the main parser's subparsers."""
    exc = subparsers.add_parser("exceptions", help="request and decide hook exceptions")
    ex = exc.add_subparsers(dest="exceptions_command", required=True)
    p = _add(ex, "request", _request, "request an exception for a hook manifest", key=True)
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--expires", required=True, metavar="DATE", help="YYYY-MM-DD (required)")
    p.add_argument("--scope", nargs="+", metavar="SELECTOR", help="host selectors (default all)")
    for name, handler in (("approve", _decision(True)), ("deny", _decision(False))):
        p = _add(ex, name, handler, f"{name} a pending request", key=True)
        p.add_argument("id", type=int, metavar="ID")
        p.add_argument("--reason", required=True, metavar="TEXT")
    p = _add(ex, "revoke", _revoke, "end an approved exception", key=True)
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--reason", required=True, metavar="TEXT")
    _add(ex, "list", _list, "every request and its status now")

    led = subparsers.add_parser("ledger", help="the signed, hash-chained exception ledger")
    lg = led.add_subparsers(dest="ledger_command", required=True)
    p = _add(lg, "init", _init, "start a ledger: entry 1 names its owner's key", key=True)
    p.add_argument("--owner", required=True, metavar="NAME")
    p = _add(lg, "key-add", _key_add, "record who owns a key, and its roles", key=True)
    p.add_argument("public_key", metavar="PUBLIC_KEY", help="raw ed25519 public key, hex")
    p.add_argument("--owner", required=True, metavar="NAME", help="vendor or organisation")
    p.add_argument("--role", action="append", choices=ROLES, help="repeatable; none: owner only")
    p = _add(lg, "key-show", _key_show, "print a key's fingerprint and public key", key=True)
    p.add_argument(
        "--create",
        action="store_true",
        help="create the key (ed25519, mode 0600) if the file does not exist",
    )
    p = _add(lg, "max-expiry", _max_expiry, "set the longest allowed exception", key=True)
    p.add_argument("days", type=int, metavar="DAYS")
    p = _add(lg, "verify", _verify, "check every hash, link, signature and rule")
    p.add_argument("--root", metavar="FINGERPRINT", help="the key entry 1 must be signed by")
    p.add_argument("--head", metavar="HASH", help="a published entry hash that must be present")
    p.add_argument(
        "--new", action="store_true", help="an empty ledger is expected (exit 0 if empty)"
    )
    transparency_cli.register(lg, p, _guarded(_verify))  # log-init, vkey, publish, prove, ...
    p = _add(lg, "show", _show, "print every entry")
    p.add_argument("--json", action="store_true", help="the export, for publishing")
    _add(lg, "report", _report, "per vendor: requests, approvals, denials, time to decision")
