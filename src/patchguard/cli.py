"""The command line: thin; every command is a call into the layers below."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from patchguard import __version__
from patchguard.findings import Severity
from patchguard.kernel import Kernel
from patchguard.scan import ScanReport, run_scan
from patchguard.surfaces import all_surfaces
from patchguard.surfaces.base import Surface

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
DEFAULT_BASELINE = "/var/lib/patchguard/baseline.zip"
ROOT_NOTE = (
    "not running as root: kallsyms addresses read as zero, bpf(2) enumeration, the kernel-memory "
    "reader, tracefs and securityfs need root; those checks will be reported unavailable"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchguard",
        description="Kernel patch protection for Linux: scan the live kernel, baseline and check "
        "its code, guard it, and keep a public ledger of sanctioned hooks.",
    )
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
    scan.add_argument(
        "--ledger",
        type=Path,
        default=None,
        metavar="PATH",
        help="exception ledger whose live exceptions mark covered hooks allowed "
        "(default $PATCHGUARD_LEDGER, else /var/lib/patchguard/ledger.db if present)",
    )

    base = sub.add_parser("baseline", help="the trusted picture of the kernel's code")
    base_sub = base.add_subparsers(dest="baseline_command", required=True)
    create = base_sub.add_parser("create", help="record the running kernel's code and tables")
    create.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"where to write it (default {DEFAULT_BASELINE}, or $PATCHGUARD_BASELINE)",
    )
    create.add_argument(
        "--key",
        type=Path,
        default=None,
        metavar="PATH",
        help="host signing key, created on first use (default "
        "/var/lib/patchguard/host.key, or $PATCHGUARD_KEY)",
    )

    check = sub.add_parser("check", help="compare the running kernel with the baseline")
    check.add_argument("--baseline", type=Path, default=None, metavar="PATH")
    check.add_argument("--key", type=Path, default=None, metavar="PATH")
    check.add_argument("--json", action="store_true", help="print the patchguard.scan/1 document")
    check.add_argument(
        "--fail-on",
        default="high",
        metavar="SEVERITY",
        help="exit 1 if a finding is at or above this (default high)",
    )
    guard = sub.add_parser("guard", help="run the guard daemon in the foreground")
    guard.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="guard config (TOML; default: built-in defaults, see docs/guard.md)",
    )
    guard.add_argument(
        "--print-unit",
        action="store_true",
        help="print the systemd unit for this installation and exit",
    )
    from patchguard.integrity import report_cli
    from patchguard.policy import cli as policy_cli

    policy_cli.register(sub)  # exceptions ..., ledger ...
    report_cli.register(sub)  # verify-report
    config = sub.add_parser("config", help="guard configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser("check", help="validate a guard config file")
    config_check.add_argument("file", type=Path)
    config_sign = config_sub.add_parser(
        "sign", help="sign a guard config with the host key (writes FILE.sig)"
    )
    config_sign.add_argument("file", type=Path)
    config_sign.add_argument("--key", type=Path, help="host key (default: the config's `key`)")
    techniques = sub.add_parser("techniques", help="list every technique a finding can name")
    techniques.add_argument("--json", action="store_true", help="as a JSON array")
    techniques.add_argument("--markdown", action="store_true", help="as docs/techniques.md")
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
    threshold = Severity.parse(args.fail_on)
    surfaces = _select(args.surface)
    kernel = Kernel(args.root)
    if kernel.live and os.geteuid() != 0:
        print(f"patchguard: {ROOT_NOTE}", file=sys.stderr)
    from patchguard.policy.ledger import default_ledger_path
    from patchguard.policy.match import ledger_policy

    policy, why_not = ledger_policy(args.ledger or default_ledger_path())
    if why_not:
        print(f"patchguard: {why_not}", file=sys.stderr)
    try:
        if err.is_terminal and not args.json:
            with err.status("scanning") as status:
                report = run_scan(
                    kernel, surfaces, lambda s: status.update(f"scanning {s.title}…"), policy=policy
                )
        else:
            report = run_scan(kernel, surfaces, policy=policy)
    finally:
        kernel.close()
    return _emit(report, args.json, out, threshold)


def _emit(
    report: ScanReport,
    as_json: bool,
    out: Console,
    threshold: Severity,
    key_path: Path | None = None,
) -> int:
    """Print a scan or check report and turn its worst finding into the exit code."""
    from patchguard.report import render, to_json

    if as_json:
        from patchguard.integrity.sealed_report import host_key_if_any, seal
        from patchguard.signing import default_key_path

        key = host_key_if_any(key_path or default_key_path())
        print(json.dumps(seal(to_json(report), key), indent=2))
    else:
        render(report, out)
    worst = report.worst()
    return EXIT_FINDINGS if worst is not None and worst >= threshold else EXIT_CLEAN


def _baseline_path(given: Path | None) -> Path:
    return given or Path(os.environ.get("PATCHGUARD_BASELINE") or DEFAULT_BASELINE)


def cmd_baseline_create(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.integrity.check import capture
    from patchguard.integrity.module_regions import module_of
    from patchguard.integrity.store import save_baseline
    from patchguard.signing import HostKey, default_key_path

    key = HostKey.load_or_create(args.key or default_key_path())
    path = _baseline_path(args.out)
    kernel = Kernel()
    try:
        taken = capture(kernel)
    finally:
        kernel.close()
    save_baseline(taken.baseline, path, key)
    meta = taken.baseline.meta
    owner = {name: module_of(name) for name in taken.baseline.regions}
    regions = taken.baseline.regions.values()
    sizes = ", ".join(f"{r.name} {len(r.data)} bytes" for r in regions if owner[r.name] is None)
    modules = {m for m in owner.values() if m is not None}
    if modules:
        size = sum(len(r.data) for r in regions if owner[r.name] is not None)
        sizes += f", {len(modules)} modules' text and tables {size} bytes"
    out.print(
        f"baseline written to {path} (signed by host key {key.fingerprint()})", highlight=False
    )
    out.print(
        f"  kernel {meta.kernel_release}, boot {meta.boot_id}, "
        f"KASLR offset {meta.kaslr_offset:#x}, read through {meta.reader}",
        highlight=False,
    )
    out.print(f"  {sizes}", highlight=False)
    for gap in taken.gaps:
        out.print(f"  not recorded: {gap.what}: {gap.reason}", highlight=False)
    return EXIT_CLEAN


def cmd_check(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.integrity.check import run_check
    from patchguard.signing import HostKey, default_key_path

    threshold = Severity.parse(args.fail_on)
    key = HostKey.load(args.key or default_key_path())
    kernel = Kernel()
    try:
        report = run_check(kernel, _baseline_path(args.baseline), key.public_key_bytes())
    finally:
        kernel.close()
    return _emit(report, args.json, out, threshold, key.path)


def cmd_guard(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.guard.daemon import main as guard_main

    if args.print_unit:
        unit = (Path(__file__).parent / "guard" / "patchguard-guard.service").read_text()
        exe = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "patchguard" else None
        print(unit.replace("@PATCHGUARD@", str(exe or "/usr/local/bin/patchguard")), end="")
        return EXIT_CLEAN
    return guard_main(args.config)


def cmd_config_check(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.guard.config import load_config
    from patchguard.guard.config_sig import check_with_host_key

    config = load_config(args.file)
    out.print(
        f"{args.file}: valid (sweeps every {config.sweep_mean:g}s "
        f"+-{config.sweep_jitter:.0%}, triggers every {config.trigger_interval:g}s)",
        highlight=False,
    )
    signature = check_with_host_key(args.file, config.key)
    if signature.ok or signature.missing:
        out.print(f"signature: {signature.reason}", highlight=False)
        return EXIT_CLEAN
    err.print(f"error: {signature.reason}", highlight=False)
    return EXIT_ERROR


def cmd_config_sign(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.guard.config import load_config
    from patchguard.guard.config_sig import sign_config
    from patchguard.signing import HostKey

    config = load_config(args.file)  # only a valid config is worth signing
    key = HostKey.load_or_create(args.key or config.key)
    written = sign_config(args.file, key)
    out.print(f"{written}: signed with host key {key.fingerprint()}", highlight=False)
    return EXIT_CLEAN


def cmd_techniques(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.techniques import TECHNIQUES, markdown

    if args.markdown:
        print(markdown(), end="")
    elif args.json:
        rows = [
            {"name": t.name, "severity": t.severity.label, "attack_id": t.attack_id,
             "meaning": t.meaning}
            for t in TECHNIQUES.values()
        ]  # fmt: skip
        print(json.dumps(rows, indent=1))
    else:
        for t in sorted(TECHNIQUES.values(), key=lambda t: t.name):
            print(f"{t.name}\t{t.severity.label}\t{t.attack_id or '-'}\t{t.meaning}")
    return EXIT_CLEAN


COMMANDS = {
    ("scan", None): cmd_scan,
    ("baseline", "create"): cmd_baseline_create,
    ("check", None): cmd_check,
    ("guard", None): cmd_guard,
    ("config", "check"): cmd_config_check,
    ("config", "sign"): cmd_config_sign,
    ("techniques", None): cmd_techniques,
}


def main(argv: Sequence[str] | None = None) -> int:
    from patchguard.guard.config import ConfigError
    from patchguard.integrity.store import BaselineError
    from patchguard.kernel import KernelAccessError
    from patchguard.signing import KeyFileError

    args = _parser().parse_args(argv)
    handler = getattr(args, "policy_handler", None)
    if handler is not None:  # the policy commands print their own one-line errors
        return int(handler(args))
    out, err = Console(), Console(stderr=True)
    sub = getattr(args, "baseline_command", None) or getattr(args, "config_command", None)
    command = COMMANDS[(args.command, sub)]
    try:
        return int(command(args, out, err))
    except (ValueError, BaselineError, KeyFileError, KernelAccessError, ConfigError) as exc:
        print(f"patchguard: {exc}", file=sys.stderr)  # one line, never wrapped
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
