"""`patchguard enrol`, `patchguard report` and `patchguard fetch-policy`: the host's side of
the fleet server. `register(subparsers)` adds them; each stores its handler as
`args.handler` (exit 0 done, 1 findings at or above --fail-on or messages refused, 2 an error
printed as one line)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from patchguard.arguments import path as path_arg

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (--help builds this parser)
if TYPE_CHECKING:
    from pathlib import Path

    from patchguard.signing import HostKey

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2
TOKEN_ENV = "PATCHGUARD_ENROL_TOKEN"
DEFAULT_BASELINE = "/var/lib/patchguard/baseline.zip"


def _say(text: str, err: bool = False) -> None:
    from patchguard.text import visible

    print(visible(text), file=sys.stderr if err else sys.stdout, flush=True)


def _enrol(args: argparse.Namespace) -> int:
    import platform

    from patchguard.fleet import client  # the client stack only when a command needs it
    from patchguard.signing import HostKey, default_key_path

    token = args.token or os.environ.get(TOKEN_ENV, "")
    if token == "-":
        token = sys.stdin.readline(4096).strip()
    if not token:
        raise client.FleetError(
            f"no enrol token: pass --token T (or - for stdin) or set {TOKEN_ENV}"
        )
    key = HostKey.load_or_create(args.key or default_key_path())
    directory = client.state_dir(args.state_dir)
    done = client.enrol(args.url, token, key, args.name or platform.node(), directory)
    if args.ledger_root:
        done = client.Enrolment(done.server, done.server_key, done.host, args.ledger_root)
        done.save(directory)
    _say(f"enrolled host {done.host} with {done.server}; server key pinned in {directory}")
    return EXIT_OK


def _message(args: argparse.Namespace, key: HostKey, directory: Path) -> tuple[str, int]:
    """Queue the message the options ask for; (what it is, its seq)."""
    from pathlib import Path

    from patchguard.fleet import client  # the client stack only when a command needs it
    from patchguard.fleet.report import collect, from_scan
    from patchguard.signing import default_key_path

    baseline = args.baseline or Path(os.environ.get("PATCHGUARD_BASELINE") or DEFAULT_BASELINE)
    digest = client.baseline_digest(baseline)
    if args.heartbeat is not None:
        payload: dict[str, object] = {"interval": args.heartbeat}
        return "heartbeat", client.queue(
            directory, key, "heartbeat", payload, baseline_digest=digest
        )
    if args.stop is not None:
        return "stop", client.queue(directory, key, "stop", {"reason": args.stop})
    if args.rotated is not None:
        payload = {"reason": args.rotated}
        return "baseline rotation", client.queue(
            directory, key, "baseline-rotated", payload, baseline_digest=digest
        )
    if args.scan_json is not None:
        found = from_scan(str(args.scan_json), _read_scan(args.scan_json))
    else:
        found = collect(
            baseline, args.key or default_key_path(), args.ledger or _ledger_for(directory)
        )
    for note in found.notes:
        _say(f"patchguard: {note}", err=True)
    payload = {"findings": found.findings, "gaps": found.gaps}
    if found.scan is not None:
        payload["scan"] = found.scan
    seq = client.queue(
        directory, key, "report", payload, baseline_digest=digest, boot_id=found.boot_id
    )
    return f"report ({len(found.findings)} findings)", seq


def _read_scan(path: Path) -> bytes:
    """The scan document's bytes as they are (at most one byte past the bound)."""
    from patchguard.fleet.report import MAX_SCAN

    if str(path) == "-":
        return sys.stdin.buffer.read(MAX_SCAN + 1)
    with path.open("rb") as f:
        return f.read(MAX_SCAN + 1)


def _ledger_for(directory: Path) -> Path:
    from patchguard.fleet.policy import LEDGER_FILE
    from patchguard.policy.ledger import default_ledger_path

    fleet = directory / LEDGER_FILE
    return fleet if fleet.exists() else default_ledger_path()


def _report(args: argparse.Namespace) -> int:
    from patchguard.fleet import client  # the client stack only when a command needs it
    from patchguard.signing import HostKey, default_key_path

    key = HostKey.load(args.key or default_key_path())
    directory = client.state_dir(args.state_dir)
    client.Enrolment.load(directory)  # not enrolled: say so before scanning
    what, seq = _message(args, key, directory)
    done = client.deliver(directory, args.server)
    for line in done.rejected:
        _say(f"patchguard: refused by the server: {line}", err=True)
    if done.unreachable:
        _say(f"patchguard: {done.unreachable}; {done.pending} message(s) spooled", err=True)
    _say(f"{what} #{seq} queued; {done.sent} sent, {done.pending} waiting")
    return EXIT_REFUSED if done.rejected else EXIT_OK


def _fetch_policy(args: argparse.Namespace) -> int:
    from patchguard.fleet import client  # the client stack only when a command needs it
    from patchguard.fleet.policy import apply_policy

    directory = client.state_dir(args.state_dir)
    root = args.root or _pinned_root(args.config, client.Enrolment.load(directory).ledger_root)
    if not root:
        raise client.FleetError(
            "no ledger root key pinned: set ledger_root in the guard's signed config, pass "
            "--root FINGERPRINT, or enrol with it"
        )
    document = client.fetch_policy(directory, args.server)
    done = apply_policy(directory, document, root)
    _say(f"ledger verified to root {root}: {done.entries} entries ({done.new} new) in {done.path}")
    return EXIT_OK


def _pinned_root(config: Path | None, enrolled: str | None) -> str | None:
    """The ledger root the guard's config pins (its signature checked with the host key, as
    the guard does), else the one pinned at enrolment; the two must agree where both are."""
    from patchguard.fleet.client import FleetError
    from patchguard.guard.config import DEFAULT_PATH, load_config
    from patchguard.guard.config_sig import check_with_host_key

    path = config or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    if path is None:
        return enrolled
    settings = load_config(path)
    pinned = settings.ledger_root
    if pinned is None:
        return enrolled
    signed = check_with_host_key(path, settings.key)
    if not signed.ok:
        raise FleetError(f"{path}: the ledger root it pins cannot be trusted: {signed.reason}")
    if enrolled and pinned != enrolled:
        raise FleetError(
            f"{path}: ledger_root {pinned} is not the root {enrolled} pinned at enrolment"
        )
    return pinned or enrolled


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from patchguard.fleet.client import FleetError
        from patchguard.integrity.store import BaselineError
        from patchguard.kernel import KernelAccessError
        from patchguard.policy.ledger import LedgerError
        from patchguard.signing import KeyFileError

        try:
            return handler(args)
        except (FleetError, KeyFileError, LedgerError, BaselineError, KernelAccessError) as exc:
            _say(f"patchguard: {exc}", err=True)
        except OSError as exc:
            _say(f"patchguard: {exc.filename or ''}: {exc.strerror or exc}", err=True)
        except KeyboardInterrupt:
            pass
        return EXIT_ERROR

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        type=path_arg,
        default=None,
        metavar="PATH",
        help="host key (default /var/lib/patchguard/host.key or $PATCHGUARD_KEY)",
    )
    parser.add_argument(
        "--state-dir",
        type=path_arg,
        default=None,
        metavar="DIR",
        help="enrolment, spool and sequence (default /var/lib/patchguard)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enrol = sub.add_parser("enrol", help="register this host with a fleet server")
    enrol.add_argument("url", help="the server, e.g. https://patchguard.example.org")
    enrol.add_argument("--token", help=f"enrol token (- reads stdin; default ${TOKEN_ENV})")
    enrol.add_argument("--name", help="the name the server shows (default: hostname)")
    enrol.add_argument(
        "--ledger-root",
        metavar="FINGERPRINT",
        help="the key that must sign the ledger's entry 1 (for fetch-policy)",
    )
    _common(enrol)
    enrol.set_defaults(handler=_guarded(_enrol))

    report = sub.add_parser("report", help="scan, check and send one signed report")
    report.add_argument("--server", help="send to this URL instead of the enrolled one")
    report.add_argument("--baseline", type=path_arg, default=None, metavar="PATH")
    report.add_argument(
        "--ledger",
        type=path_arg,
        default=None,
        metavar="PATH",
        help="exception ledger for the scan (default: the fetched one)",
    )
    kind = report.add_mutually_exclusive_group()
    kind.add_argument(
        "--heartbeat",
        type=int,
        metavar="SECONDS",
        help="send only a heartbeat: the next comes within SECONDS",
    )
    kind.add_argument("--stop", metavar="REASON", help="say that the guard stops cleanly")
    kind.add_argument(
        "--rotated", metavar="REASON", help="announce the current baseline as a deliberate rotation"
    )
    kind.add_argument(
        "--scan-json",
        type=path_arg,
        metavar="FILE",
        help="send this sealed `patchguard scan --json` document (- reads stdin) instead of "
        "scanning; the server checks its seal against this host's key",
    )
    _common(report)
    report.set_defaults(handler=_guarded(_report))

    fetch = sub.add_parser("fetch-policy", help="fetch, verify and apply the server's ledger")
    fetch.add_argument("--server", help="fetch from this URL instead of the enrolled one")
    fetch.add_argument("--root", metavar="FINGERPRINT", help="override the pinned root key")
    fetch.add_argument(
        "--config",
        type=path_arg,
        metavar="PATH",
        help="the guard's signed config whose ledger_root pins the ledger (default "
        "/etc/patchguard/guard.toml if present)",
    )
    _common(fetch)
    fetch.set_defaults(handler=_guarded(_fetch_policy))
