"""The command line: thin; every command is a call into the layers below."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from patchguard import __version__
from patchguard.engine.findings import Severity
from patchguard.engine.scan import run_scan
from patchguard.kernel import Kernel
from patchguard.surfaces import all_surfaces
from patchguard.surfaces.base import Surface

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
ROOT_NOTE = (
    "not running as root: kallsyms addresses read as zero, bpf(2) enumeration, the kernel-memory "
    "reader, tracefs and securityfs need root; those checks will be reported unavailable"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchguard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"patchguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="read every surface of the live kernel and report")
    scan.add_argument("--json", action="store_true", help="print the patchguard.scan/1 document")
    scan.add_argument(
        "--fail-on",
        default="high",
        metavar="SEVERITY",
        help="exit 1 if a finding is at or above this (info..critical; default high)",
    )
    scan.add_argument(
        "--surface", action="append", metavar="NAME", help="only this surface (repeatable)"
    )
    scan.add_argument("--root", default="/", help="read a captured tree instead of the live kernel")
    return parser


def _select(names: Sequence[str] | None) -> list[Surface]:
    surfaces = all_surfaces()
    if not names:
        return surfaces
    known = {s.name: s for s in surfaces}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown surface {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in names]


def cmd_scan(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.report import render, to_json

    threshold = Severity.parse(args.fail_on)
    surfaces = _select(args.surface)
    kernel = Kernel(args.root)
    if kernel.live and os.geteuid() != 0:
        print(f"patchguard: {ROOT_NOTE}", file=sys.stderr)
    try:
        if err.is_terminal and not args.json:
            with err.status("scanning") as status:
                report = run_scan(kernel, surfaces, lambda s: status.update(f"scanning {s.title}…"))
        else:
            report = run_scan(kernel, surfaces)
    finally:
        kernel.close()
    if args.json:
        print(json.dumps(to_json(report), indent=2))
    else:
        render(report, out)
    worst = report.worst()
    return EXIT_FINDINGS if worst is not None and worst >= threshold else EXIT_CLEAN


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out, err = Console(), Console(stderr=True)
    try:
        return int(cmd_scan(args, out, err))
    except ValueError as exc:
        print(f"patchguard: {exc}", file=sys.stderr)  # one line, never wrapped
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
