"""`patchguard ledger log-init|vkey|publish|prove|watch`, `ledger verify --url`, and
`patchguard witness vkey|cosign|serve`.

`register(ledger_group, verify_parser, local_verify)` adds the log commands to `ledger` and
lets `ledger verify` read a published log when given `--url` (the local check otherwise).
Exit codes as in policy/cli.py: 0 done, 1 the log does not verify (a split view prints both
checkpoints), 2 an error or malformed input, printed as one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from patchguard.arguments import path as path_arg

# What each command needs is imported when it runs (HTTP client and server, the ledger, keys):
# registering the commands is part of every `patchguard --help`.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from patchguard.policy.transparency import note
    from patchguard.policy.transparency.witness import Witness

EXIT_OK, EXIT_BAD_LOG, EXIT_ERROR = 0, 1, 2
Handler = Callable[[argparse.Namespace], int]


def visible(text: str) -> str:
    """Text from others made safe for a terminal: every control or invisible character shown
    as an escape (newlines too, unless the text is meant to span lines)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else
                   f"\\u{ord(c):04x}" for c in text)  # fmt: skip


def _lines(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return "\n".join("  " + visible(line) for line in text.rstrip("\n").split("\n"))


def _ledger(args: argparse.Namespace) -> Path:
    from patchguard.policy.paths import default_ledger_path

    return path_arg(args.ledger) if args.ledger else default_ledger_path()


def _print(text: str) -> None:
    print(text, flush=True)


def _guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from patchguard.policy.ledger import LedgerError
        from patchguard.policy.transparency import TransparencyError, client
        from patchguard.policy.transparency.checkpoint import SplitView
        from patchguard.signing import KeyFileError

        try:
            return handler(args)
        except SplitView as exc:
            print(f"patchguard: {visible(str(exc))}", file=sys.stderr)
            print(f"checkpoint seen before:\n{_lines(exc.first)}", file=sys.stderr)
            print(f"checkpoint now:\n{_lines(exc.second)}", file=sys.stderr)
            return EXIT_BAD_LOG
        except client.VerifyFailed as exc:
            print(f"patchguard: does not verify: {visible(str(exc))}", file=sys.stderr)
            return EXIT_BAD_LOG
        except (TransparencyError, LedgerError, KeyFileError) as exc:
            print(f"patchguard: {visible(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return EXIT_OK

    return run


def _log_init(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import publish

    path = _ledger(args)
    key = path_arg(args.log_key) if args.log_key else path.parent / "log.key"
    signed = publish.init_log(path, args.origin, key)
    _print(f"{path}: a transparency log; first checkpoint {signed.checkpoint.describe()}")
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import publish, rotation
    from patchguard.signing import HostKey

    path = _ledger(args)
    done = rotation.rotate(path, HostKey.load(args.key), args.new_log_key)
    vkey = publish.load_log(path).config.verifier.vkey
    _print(f"{path}: entry {done.entry.seq} rotates the log key; checkpoints after it: {vkey}")
    return EXIT_OK


def _vkey(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import publish

    _print(publish.load_log(_ledger(args)).config.verifier.vkey)
    return EXIT_OK


def _publish(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import publish

    view = publish.load_log(_ledger(args))
    done = publish.publish(view, path_arg(args.directory))
    _print(
        f"{args.directory}: {view.latest.checkpoint.describe()}; "
        f"{done.written} files written, {done.unchanged} unchanged"
    )
    return EXIT_OK


def _prove(args: argparse.Namespace) -> int:
    from patchguard.policy.ledger import LedgerError
    from patchguard.policy.transparency import publish

    view = publish.load_log(_ledger(args))
    if args.consistency is not None:
        sys.stdout.write(publish.prove_consistency(view, args.consistency))
    elif args.entry is not None:
        sys.stdout.write(publish.prove_inclusion(view, args.entry))
    else:
        raise LedgerError(view.path, "prove what? give ENTRY or --consistency OLD_SIZE")
    return EXIT_OK


def _state(args: argparse.Namespace) -> Path:
    from patchguard.policy.transparency import client

    return path_arg(args.state) if args.state else client.default_state_dir()


def _verify_remote(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import client

    done = client.verify(args.url, args.vkey, _state(args), replay=not args.tree_only)
    checkpoint = done.signed.checkpoint
    before = (
        f"consistent with size {done.previous.checkpoint.size} seen before"
        if done.previous
        else "first contact: remembered"
    )
    _print(f"{visible(args.url)}: {visible(checkpoint.describe())} verifies; {before}")
    return EXIT_OK


def _entry_line(at: int, data: bytes) -> str:
    from patchguard.policy.transparency import client

    entry = client.parse_entry(data, at)
    payload = visible(entry.payload)
    payload = payload if len(payload) <= 200 else payload[:200] + "..."
    fields = (str(at + 1), entry.time, entry.kind, entry.actor, str(entry.subject), payload)
    return "\t".join(visible(f) for f in fields)


def _watch(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import client

    vkey, polls = args.vkey, 0
    while True:
        done = client.check(args.url, vkey, _state(args), full=False)
        lines = [_entry_line(at, data) for at, data in client.new_entries(done)]
        for line in lines:  # each entry proven included before anything is shown
            _print(line)
        client.remember(_state(args), done.vkey, done.signed)  # only then: none is ever missed
        polls += 1
        if args.once or (args.polls and polls >= args.polls):
            return EXIT_OK
        vkey = None  # pinned in the state from now on
        time.sleep(args.interval)


def _add(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text)
    parser.add_argument(
        "--ledger",
        metavar="PATH",
        help="the ledger (default $PATCHGUARD_LEDGER, else /var/lib/patchguard/ledger.db)",
    )
    parser.set_defaults(policy_handler=_guarded(handler))
    return parser


def _remote_args(parser: argparse.ArgumentParser, url_required: bool) -> None:
    parser.add_argument(
        "--url", required=url_required, metavar="URL|DIR", help="a published log (tlog-tiles)"
    )
    parser.add_argument("--vkey", metavar="KEY", help="the log's verifier key (first contact)")
    parser.add_argument(
        "--state", metavar="DIR", help="where checkpoints seen are kept (~/.local/state/patchguard)"
    )


def register(ledger_group: Any, verify_parser: argparse.ArgumentParser, local: Handler) -> None:
    """Add the log commands to `ledger`; `ledger verify --url` verifies a published log."""
    p = _add(ledger_group, "log-init", _log_init, "make the ledger a signed transparency log")
    p.add_argument("--origin", required=True, metavar="NAME", help="e.g. ledger.example.com/x")
    p.add_argument("--log-key", metavar="KEY", help="log key PEM (default: log.key by the ledger)")
    _add(ledger_group, "vkey", _vkey, "print the log's note verifier key")
    p = _add(ledger_group, "rotate-log-key", _rotate, "move the log to a new signing key")
    p.add_argument(
        "--key", type=path_arg, required=True, metavar="KEY", help="a policy key (the owner)"
    )
    p.add_argument(
        "--new-log-key", type=path_arg, required=True, metavar="KEY", help="PEM, made if missing"
    )
    p = _add(ledger_group, "publish", _publish, "write the log as C2SP tlog-tiles files")
    p.add_argument("directory", metavar="DIR")
    p = _add(ledger_group, "prove", _prove, "print an inclusion or consistency proof")
    p.add_argument("entry", type=int, nargs="?", metavar="ENTRY", help="entry number (seq)")
    p.add_argument("--consistency", type=int, metavar="OLD_SIZE", help="from this tree size")
    p = _add(ledger_group, "watch", _watch, "print each new entry of a published log")
    _remote_args(p, url_required=True)
    p.add_argument("--once", action="store_true", help="check once and exit")
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--polls", type=int, default=0, metavar="N", help="stop after N checks")
    _remote_args(verify_parser, url_required=False)
    verify_parser.add_argument(
        "--tree-only", action="store_true", help="with --url: skip re-verifying each entry"
    )
    remote = _guarded(_verify_remote)
    verify_parser.set_defaults(policy_handler=lambda a: remote(a) if a.url else local(a))
    from patchguard.policy.transparency import collect_cli  # witness-collect

    collect_cli.register(ledger_group)


def _log_key(text: str) -> tuple[str, note.Verifier]:
    """`VKEY` (the origin is the key's name) or `ORIGIN=VKEY`."""
    from patchguard.policy.transparency import note

    origin, equals, vkey = text.partition("=")
    if equals and "+" not in origin:
        return origin, note.parse_vkey(vkey)
    verifier = note.parse_vkey(text)
    return verifier.name, verifier


def _witness(args: argparse.Namespace) -> Witness:
    from patchguard.policy.transparency import note
    from patchguard.policy.transparency.witness import Witness
    from patchguard.signing import HostKey

    key = (
        HostKey.load_or_create(path_arg(args.key))
        if args.create
        else HostKey.load(path_arg(args.key))
    )
    signer = note.Signer(note.check_name(args.name), note.COSIGNATURE, key)
    logs = tuple(_log_key(v) for v in args.log or ())
    return Witness(signer, logs, _state(args), tuple(_published(v) for v in args.log_tiles or ()))


def _published(text: str) -> tuple[str, str]:
    from patchguard.policy.transparency import TransparencyError, note

    origin, equals, where = text.partition("=")
    if not equals or not where:
        raise TransparencyError(f"--log-tiles {text!r}: expected ORIGIN=URL (or directory)")
    return note.check_name(origin), where


def _witness_vkey(args: argparse.Namespace) -> int:
    _print(_witness(args).signer.verifier.vkey)
    return EXIT_OK


def _read_request(name: str) -> bytes:
    from patchguard.policy.transparency import TransparencyError
    from patchguard.policy.transparency.witness import MAX_REQUEST

    if name == "-":
        return sys.stdin.buffer.read(MAX_REQUEST + 1)
    try:
        with open(name, "rb") as f:
            return f.read(MAX_REQUEST + 1)
    except OSError as exc:
        raise TransparencyError(f"cannot read: {exc.strerror or exc}") from None


def _cosign(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import TransparencyError
    from patchguard.policy.transparency.checkpoint import SplitView

    witness = _witness(args)
    if not witness.logs:
        raise TransparencyError("name the logs this witness follows with --log VKEY")
    try:
        cosigned = witness.add_checkpoint(_read_request(args.request), int(time.time()))
    except SplitView:
        raise
    except TransparencyError as exc:  # named by the request it came with
        where = "stdin" if args.request == "-" else args.request
        raise TransparencyError(f"{where}: {exc}") from None
    sys.stdout.write(cosigned.encoded.decode("utf-8"))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import TransparencyError, serve

    witness = _witness(args)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit() or not host:
        raise TransparencyError(f"--listen {args.listen!r}: expected HOST:PORT")
    server = serve.serve(witness, host.strip("[]"), int(port))
    _print(f"witness {witness.signer.verifier.vkey} on http://{args.listen}/add-checkpoint")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return EXIT_OK


def register_witness(subparsers: Any) -> None:
    """Add `witness vkey|cosign|serve` to the main parser's subparsers."""
    parser = subparsers.add_parser("witness", help="cosign a log's checkpoints (C2SP witness)")
    group = parser.add_subparsers(dest="witness_command", required=True)
    for name, handler, text in (
        ("vkey", _witness_vkey, "print the witness's cosignature verifier key"),
        ("cosign", _cosign, "cosign a checkpoint given with its consistency proof"),
        ("serve", _serve, "answer C2SP tlog-witness add-checkpoint requests over HTTP"),
    ):
        p = group.add_parser(name, help=text)
        p.add_argument("--key", required=True, metavar="KEY", help="witness key (PEM file)")
        p.add_argument("--create", action="store_true", help="create the key if missing")
        p.add_argument("--name", required=True, metavar="NAME", help="e.g. witness.example/w1")
        p.add_argument(
            "--log",
            action="append",
            metavar="VKEY",
            help="a log it follows (origin = the key's name), or ORIGIN=VKEY",
        )
        p.add_argument("--state", metavar="DIR", help="default ~/.local/state/patchguard")
        p.add_argument(
            "--log-tiles",
            action="append",
            metavar="ORIGIN=URL",
            help="where a log publishes its tiles: to follow a log-key rotation it announces",
        )
        p.set_defaults(policy_handler=_guarded(handler))
        if name == "cosign":
            p.add_argument(
                "request", metavar="REQUEST", help="`ledger prove --consistency` output, or -"
            )
        if name == "serve":
            p.add_argument("--listen", default="127.0.0.1:7380", metavar="HOST:PORT")
