"""The guard's trusted CLI words: `patchguard baseline rotate` (the only way the running guard
takes a new baseline) and `patchguard guard --stop-requested PID` (the unit's ExecStop, so
that a stop through systemctl is told from a SIGTERM sent by anyone else)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_PATH = Path("/etc/patchguard/guard.toml")  # as guard/config.py, without importing it
EXIT_OK, EXIT_ERROR = 0, 2


def register_baseline(baseline_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rotate = baseline_sub.add_parser(
        "rotate",
        help="ask the running guard to take the current baseline file (signed request)",
    )
    rotate.add_argument(
        "--config", type=Path, default=DEFAULT_PATH, metavar="PATH", help="the guard's config"
    )
    rotate.add_argument("--reason", required=True, metavar="TEXT", help="why (announced)")
    rotate.set_defaults(handler=_guarded(cmd_rotate))


def register_guard(guard: argparse.ArgumentParser) -> None:
    guard.add_argument(
        "--stop-requested",
        nargs="?",
        const="",
        default=None,
        metavar="PID",
        help="(the unit's ExecStop) record that the guard PID is being stopped on purpose",
    )


def _guarded(handler: object) -> object:
    from collections.abc import Callable

    assert callable(handler)
    run: Callable[[argparse.Namespace], int] = handler

    def guarded(args: argparse.Namespace) -> int:
        from patchguard.guard.config import ConfigError
        from patchguard.safe_read import InputError
        from patchguard.signing import KeyFileError
        from patchguard.text import visible

        try:
            return run(args)
        except (ConfigError, InputError, KeyFileError, OSError, ValueError) as exc:
            print(f"patchguard: {visible(exc)}", file=sys.stderr)
            return EXIT_ERROR

    return guarded


def cmd_rotate(args: argparse.Namespace) -> int:
    from patchguard.guard import state as guard_state
    from patchguard.guard.config import load_config
    from patchguard.guard.pins import rotation_now, write_rotation
    from patchguard.guard.tamper import baseline_digest
    from patchguard.signing import HostKey

    config = load_config(args.config)
    if config.baseline is None:
        raise ValueError(f"{args.config}: guard.baseline: the guard checks no baseline")
    after = baseline_digest(config.baseline)
    if after.startswith("unreadable"):
        raise ValueError(f"{config.baseline}: {after}")
    key = HostKey.load(config.key)
    state, _why = guard_state.load(config.state_dir / guard_state.NAME, key.public_key_bytes())
    before = state.baseline_sha256 if state is not None else None
    rotation = rotation_now(config.baseline, before, after, args.reason)
    path = write_rotation(config.state_dir, rotation, key)
    print(f"{path}: rotation of {config.baseline} to sha256 {after} requested")
    return EXIT_OK


def stop_requested(config_path: Path | None, pid_text: str) -> int:
    """ExecStop: $MAINPID is empty when the guard already exited; nothing to record then."""
    from patchguard.guard.config import GuardConfig, load_config
    from patchguard.guard.stops import write_request

    if not pid_text:
        return EXIT_OK
    if not pid_text.isdigit():
        print(f"patchguard: --stop-requested: not a pid: {pid_text[:20]!r}", file=sys.stderr)
        return EXIT_ERROR
    config = load_config(config_path) if config_path is not None else GuardConfig()
    write_request(config.state_dir, int(pid_text))
    return EXIT_OK
