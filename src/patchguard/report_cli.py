"""`patchguard verify-report FILE`: whether a `scan --json`/`check --json` report was altered
(sealed_report.py). Exit 0 intact, 1 altered, 2 when the file or key cannot be read."""

from __future__ import annotations

import argparse
import sys

from patchguard.arguments import path as path_arg

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (--help builds this parser)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

EXIT_INTACT, EXIT_ALTERED, EXIT_ERROR = 0, 1, 2


def _read(path: Path) -> bytes:
    """The report, bounded: at most MAX_REPORT bytes (OSError or ValueError otherwise)."""
    from patchguard.sealed_report import MAX_REPORT

    with path.open("rb") as f:
        data = f.read(MAX_REPORT + 1)
    if len(data) > MAX_REPORT:
        raise ValueError(f"larger than {MAX_REPORT} bytes: not a patchguard report")
    return data


def _public_key(given: Path | None) -> bytes | None:
    """The host key's public half: the one given (an error if unreadable), else the host's
    own if there is one."""
    from patchguard.signing import HostKey, KeyFileError, default_key_path

    if given is not None:
        return HostKey.load(given).public_key_bytes()
    try:
        return HostKey.load(default_key_path()).public_key_bytes()
    except KeyFileError:
        return None


def _verify_report(args: argparse.Namespace) -> int:
    from patchguard.sealed_report import verify
    from patchguard.signing import KeyFileError
    from patchguard.text import visible

    name = visible(str(args.file))
    try:
        data = _read(path_arg(args.file))
        public_key = _public_key(args.key)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"patchguard: {name}: {visible(why)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyFileError as exc:
        print(f"patchguard: {visible(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    verdict = verify(data, public_key)
    print(f"{name}: {visible(verdict.detail)}")
    return EXIT_INTACT if verdict.intact else EXIT_ALTERED


def register(subparsers: Any) -> None:
    """Add `verify-report` to the main parser's subparsers."""
    p = subparsers.add_parser(
        "verify-report", help="say whether a scan/check --json report was altered"
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--key",
        type=path_arg,
        default=None,
        metavar="PATH",
        help="host key whose signature to check (default /var/lib/patchguard/host.key, "
        "or $PATCHGUARD_KEY, if present)",
    )
    p.set_defaults(policy_handler=_verify_report)
