"""`patchguard ledger witness-collect --witness URL [--witness URL ...] [DIR]`: get the
published checkpoint cosigned by witnesses (C2SP tlog-witness over HTTP) and write it back with
their cosignature lines appended.

Exit 0: every witness cosigned; 1: some did not (what the others gave is written all the same:
an offline witness delays the quorum, it never blocks the rest); 2: an error, one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from patchguard.policy.transparency.cli import (
    EXIT_BAD_LOG,
    EXIT_OK,
    _add,
    _ledger,
    _print,
    visible,
)


def _collect(args: argparse.Namespace) -> int:
    from patchguard.policy.transparency import collect, publish

    view = publish.load_log(_ledger(args))
    done = collect.collect(view, Path(args.directory), list(args.witness))
    for answer in done.answers:
        said = "cosigned" if answer.lines else f"nothing: {answer.problem}"
        _print(f"{visible(answer.url)}: {visible(said)}")
    _print(
        f"{visible(args.directory)}/checkpoint: {done.checkpoint.checkpoint.describe()}, "
        f"{done.cosigned} of {len(done.answers)} witnesses cosigned this round"
    )
    return EXIT_OK if done.cosigned == len(done.answers) else EXIT_BAD_LOG


def register(ledger_group: Any) -> None:
    p = _add(
        ledger_group,
        "witness-collect",
        _collect,
        "get the published checkpoint cosigned by witnesses (C2SP tlog-witness)",
    )
    p.add_argument(
        "--witness", action="append", required=True, metavar="URL", help="a witness (repeatable)"
    )
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="`ledger publish` DIR")
