"""The command line: thin; every command is a call into the layers below.

Every import but os and sys (loaded with Python itself) waits for the command that needs it:
`--version` costs Python's start and little else, `scan --json` never imports rich
(tests/unit/test_lazy_imports.py; bench/scan.py --process measures the whole processes).
"""

from __future__ import annotations

import os
import sys

from patchguard import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any, NoReturn

    from rich.console import Console

    from patchguard.findings import Severity
    from patchguard.scan import ScanReport
    from patchguard.signing import HostKey
    from patchguard.surfaces.base import Surface

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
DEFAULT_BASELINE = "/var/lib/patchguard/baseline.zip"
ROOT_NOTE = (
    "not running as root: kallsyms addresses read as zero, bpf(2) enumeration, the kernel-memory "
    "reader, tracefs and securityfs need root; those checks will be reported unavailable"
)


CORE_COMMANDS = frozenset({"scan", "baseline", "check", "guard", "config", "techniques"})
# The command groups other modules add (module, its register function) and the help line each
# shows in `patchguard --help`: only the group a command line names is registered, the others
# are listed by name and help (the help texts are the registered ones: tests/unit/test_cli_lazy).
GROUPS: dict[str, tuple[str, str, str]] = {
    "exceptions": ("patchguard.policy.cli", "register", "request and decide hook exceptions"),
    "ledger": ("patchguard.policy.cli", "register", "the signed, hash-chained exception ledger"),
    "witness": (
        "patchguard.policy.cli",
        "register_witness",
        "cosign a log's checkpoints (C2SP witness)",
    ),
    "enrol": ("patchguard.fleet.cli", "register", "register this host with a fleet server"),
    "report": ("patchguard.fleet.cli", "register", "scan, check and send one signed report"),
    "fetch-policy": (
        "patchguard.fleet.cli",
        "register",
        "fetch, verify and apply the server's ledger",
    ),
    "server": (
        "patchguard.server.cli",
        "register",
        "the fleet server (run, migrate, tokens, ledger)",
    ),
    "verify-report": (
        "patchguard.report_cli",
        "register",
        "say whether a scan/check --json report was altered",
    ),
}


def _command(argv: Sequence[str] | None) -> str | None:
    """The command a command line names (its first word that is not an option), if any."""
    words = list(sys.argv[1:] if argv is None else argv)
    return next((w for w in words if not w.startswith("-")), None)


def _add_groups(sub: Any, command: str | None, everything: bool = False) -> None:
    """The other modules' command groups: none for a core command (their modules cost scan
    and check a tenth of a run); else the one named registered in full and the rest listed
    by name and help, or (`everything`) all registered."""
    import importlib

    if command in CORE_COMMANDS:
        return
    wanted = GROUPS[command][:2] if command in GROUPS else None
    for name, (module, function, help_text) in GROUPS.items():
        if name in sub.choices:
            continue  # added by a register call that adds several
        if everything or (module, function) == wanted:
            getattr(importlib.import_module(module), function)(sub)
        else:
            sub.add_parser(name, help=help_text)


def _guard_commands(command: str | None, everything: bool) -> Any:
    if everything or command in ("baseline", "guard"):
        from patchguard import guard_cli

        return guard_cli
    return None


def _parser(command: str | None = None, everything: bool = True) -> argparse.ArgumentParser:
    """The parser for a command line naming `command`: with `everything`, every group's
    commands in full (tests); else only those `command` needs (see _add_groups)."""
    import argparse

    from patchguard.arguments import path as path_arg

    parser = argparse.ArgumentParser(
        prog="patchguard",
        description="Kernel patch protection for Linux: scan the live kernel, baseline and check "
        "its code, guard it, and keep a public ledger of sanctioned hooks.",
    )
    parser.add_argument("--version", action="version", version=f"patchguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    if command == "check" and not everything:  # its words alone: the process is the product
        _check_parser(sub)
        return parser
    scan = sub.add_parser("scan", help="read every surface of the live kernel and report")
    scan.add_argument("--json", action="store_true", help="print the patchguard.scan/1 document")
    _records_option(scan)
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
        type=path_arg,
        default=None,
        metavar="PATH",
        help="exception ledger whose live exceptions mark covered hooks allowed "
        "(default $PATCHGUARD_LEDGER, else /var/lib/patchguard/ledger.db if present)",
    )
    scan.add_argument(
        "--config",
        type=path_arg,
        default=None,
        metavar="PATH",
        help="guard config whose [transparency] table gates exceptions (default "
        "/etc/patchguard/guard.toml if present)",
    )

    base = sub.add_parser("baseline", help="the trusted picture of the kernel's code")
    base_sub = base.add_subparsers(dest="baseline_command", required=True)
    create = base_sub.add_parser("create", help="record the running kernel's code and tables")
    create.add_argument(
        "--out",
        type=path_arg,
        default=None,
        metavar="PATH",
        help=f"where to write it (default {DEFAULT_BASELINE}, or $PATCHGUARD_BASELINE)",
    )
    create.add_argument(
        "--key",
        type=path_arg,
        default=None,
        metavar="PATH",
        help="host signing key, created on first use (default "
        "/var/lib/patchguard/host.key, or $PATCHGUARD_KEY)",
    )

    # the guard's trusted words only for a command line that may use them (--help stays lean)
    guard_commands = _guard_commands(command, everything)
    if guard_commands is not None:
        guard_commands.register_baseline(base_sub)  # baseline rotate
    _check_parser(sub)
    guard = sub.add_parser("guard", help="run the guard daemon in the foreground")
    guard.add_argument(
        "--config",
        type=path_arg,
        default=None,
        metavar="PATH",
        help="guard config (TOML; default: built-in defaults, see docs/guard.md)",
    )
    guard.add_argument(
        "--print-unit",
        action="store_true",
        help="print the systemd unit for this installation and exit",
    )
    if guard_commands is not None:
        guard_commands.register_guard(guard)  # --stop-requested PID (ExecStop)
    _add_groups(sub, command, everything)
    config = sub.add_parser("config", help="guard configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser("check", help="validate a guard config file")
    config_check.add_argument("file", type=path_arg)
    config_sign = config_sub.add_parser(
        "sign", help="sign a guard config with the host key (writes FILE.sig)"
    )
    config_sign.add_argument("file", type=path_arg)
    config_sign.add_argument("--key", type=path_arg, help="host key (default: the config's `key`)")
    techniques = sub.add_parser("techniques", help="list every technique a finding can name")
    techniques.add_argument("--json", action="store_true", help="as a JSON array")
    techniques.add_argument("--markdown", action="store_true", help="as docs/techniques.md")
    return parser


def _check_parser(sub: Any) -> None:
    from patchguard.arguments import path as path_arg

    check = sub.add_parser("check", help="compare the running kernel with the baseline")
    check.add_argument("--baseline", type=path_arg, default=None, metavar="PATH")
    check.add_argument("--key", type=path_arg, default=None, metavar="PATH")
    check.add_argument("--json", action="store_true", help="print the patchguard.scan/1 document")
    _records_option(check)
    check.add_argument(
        "--fail-on",
        default="high",
        metavar="SEVERITY",
        help="exit 1 if a finding is at or above this (default high)",
    )


def _stored_help() -> str | None:
    """`patchguard --help` as argparse renders it, stored in stored_help.py: importing
    argparse and building the parser cost more than Python's start. Used only where argparse
    would print the same text: the Python it was rendered by, and the width it wraps at."""
    from patchguard import stored_help

    if tuple(sys.version_info[:2]) != stored_help.PYTHON or _columns() != stored_help.COLUMNS:
        return None
    return stored_help.TEXT


def _columns() -> int:
    """shutil.get_terminal_size().columns (argparse wraps help at it), without shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        stdout = sys.__stdout__
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0
        except (ValueError, OSError):
            columns = 0
    return columns or 80


def render_help(columns: int) -> str:
    """The top-level help as argparse renders it `columns` wide (what stored_help.py keeps)."""
    import argparse

    parser = _parser(None, everything=False)
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=columns - 2)
    return parser.format_help()


def store_help(columns: int = 80) -> None:
    """Write stored_help.py from this Python's argparse (after a change to the parser)."""
    from pathlib import Path

    from patchguard.atomic import write_atomic

    version = tuple(sys.version_info[:2])
    body = (
        '"""`patchguard --help` as argparse renders it (written by cli.store_help: do not edit;\n'
        'tests/unit/test_stored_help.py checks it is what argparse prints)."""\n\n'
        f"PYTHON = {version!r}\nCOLUMNS = {columns!r}\n"
        f"TEXT = (\n{_literals(render_help(columns))})\n"
    )
    write_atomic(Path(__file__).with_name("stored_help.py"), body.encode())


def _literals(text: str, width: int = 80) -> str:
    """`text` as adjacent double-quoted literals, one a line, none longer than ruff allows."""
    if not all(c == "\n" or " " <= c <= "~" for c in text):  # else escape more than quotes
        raise ValueError("the help text is not printable ASCII")
    pieces = [
        line[i : i + width] for line in text.splitlines(True) for i in range(0, len(line), width)
    ]
    quoted = (p.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for p in pieces)
    return "".join(f'    "{q}"\n' for q in quoted)


def _records_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--records",
        action="store_true",
        help="with --json: each surface's full record list too (large; see docs/scan-json.md)",
    )


class _LazyConsole:
    """A rich Console made on first use: JSON output never pays for importing rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def _consoles() -> tuple[Console, Console]:
    return _LazyConsole(), _LazyConsole(stderr=True)  # type: ignore[return-value]  # a stand-in


def _select(names: Sequence[str] | None) -> list[Surface]:
    from patchguard.surfaces import all_surfaces

    surfaces = all_surfaces()
    if not names:
        return surfaces
    known = {s.name: s for s in surfaces}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown surface {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in names]


def _may_exist(path: Path) -> bool:
    """False only if `path` is certainly not there (a refused look is left to the caller)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def cmd_scan(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.findings import Severity
    from patchguard.kernel import Kernel
    from patchguard.scan import run_scan

    threshold = Severity.parse(args.fail_on)
    surfaces = _select(args.surface)
    kernel = Kernel(args.root)
    if kernel.live and os.geteuid() != 0:
        print(f"patchguard: {ROOT_NOTE}", file=sys.stderr)
    from patchguard.policy.paths import default_ledger_path

    ledger = args.ledger or default_ledger_path()
    policy, why_not = None, None
    if _may_exist(ledger):  # the exception matching is imported only where a ledger may be
        from patchguard.guard.witnessed import scan_policy  # gated if [transparency] says so

        policy, why_not, surfaces = scan_policy(ledger, args.config, surfaces)
    if why_not:
        from patchguard.text import visible

        print(f"patchguard: {visible(why_not)}", file=sys.stderr)
    try:
        if not args.json and err.is_terminal:
            with err.status("scanning") as status:
                report = run_scan(
                    kernel, surfaces, lambda s: status.update(f"scanning {s.title}…"), policy=policy
                )
        else:
            report = run_scan(kernel, surfaces, policy=policy)
    finally:
        kernel.close()
    return _emit(report, args, out, threshold)


def _emit(
    report: ScanReport,
    args: argparse.Namespace,
    out: Console,
    threshold: Severity,
    signer: HostKey | None = None,
) -> int:
    """Print a scan or check report and turn its worst finding into the exit code. A JSON
    report is sealed by `signer` (check: the key it already loaded), else by the host key if
    there is one."""
    if args.json:
        import json

        from patchguard.report import to_json
        from patchguard.sealed_report import host_key_if_any, seal
        from patchguard.signing import default_key_path

        key = signer or host_key_if_any(default_key_path())
        print(json.dumps(seal(to_json(report, records=args.records), key), indent=2))
    else:
        from patchguard.report import render

        render(report, out)
    return exit_code(report, threshold)


def exit_code(report: ScanReport, threshold: Severity) -> int:
    """1 for findings at or above the threshold; else 2 (never 0, which a script reads as
    clean) when most surfaces could not be read at all, as for a scan without root."""
    from patchguard.surfaces.base import Status

    worst = report.worst()
    if worst is not None and worst >= threshold:
        return EXIT_FINDINGS
    blind = [r.surface.name for r in report.results if r.state.status is Status.UNAVAILABLE]
    if report.results and 2 * len(blind) > len(report.results):
        print(
            f"patchguard: {len(blind)} of {len(report.results)} surfaces could not be read "
            f"({', '.join(blind)}): this is not a clean result",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_CLEAN


def _baseline_path(given: Path | None) -> Path:
    from pathlib import Path

    return given or Path(os.environ.get("PATCHGUARD_BASELINE") or DEFAULT_BASELINE)


def cmd_baseline_create(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.integrity.check import capture
    from patchguard.integrity.module_regions import module_of
    from patchguard.integrity.store import save_baseline
    from patchguard.kernel import Kernel
    from patchguard.signing import HostKey, default_key_path
    from patchguard.text import visible

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
        out.print(
            f"  not recorded: {visible(gap.what)}: {visible(gap.reason)}",
            highlight=False,
            markup=False,
        )
    return EXIT_CLEAN


def cmd_check(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.findings import Severity
    from patchguard.integrity.check import run_check
    from patchguard.kernel import Kernel
    from patchguard.signing import HostKey, default_key_path

    threshold = Severity.parse(args.fail_on)
    key = HostKey.load(args.key or default_key_path())
    kernel = Kernel()
    try:
        report = run_check(kernel, _baseline_path(args.baseline), key.public_key_bytes())
    finally:
        kernel.close()
    return _emit(report, args, out, threshold, key)


def cmd_guard(args: argparse.Namespace, out: Console, err: Console) -> int:
    from pathlib import Path

    from patchguard.guard.daemon import main as guard_main

    if args.print_unit:
        unit = (Path(__file__).parent / "guard" / "patchguard-guard.service").read_text()
        exe = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "patchguard" else None
        print(unit.replace("@PATCHGUARD@", str(exe or "/usr/local/bin/patchguard")), end="")
        return EXIT_CLEAN
    if args.stop_requested is not None:
        from patchguard.guard_cli import stop_requested

        return stop_requested(args.config, args.stop_requested)
    return guard_main(args.config)


def cmd_config_check(args: argparse.Namespace, out: Console, err: Console) -> int:
    from patchguard.guard.config import load_config
    from patchguard.guard.config_sig import check_with_host_key
    from patchguard.text import visible

    config = load_config(args.file)
    out.print(
        f"{args.file}: valid (sweeps every {config.sweep_mean:g}s "
        f"+-{config.sweep_jitter:.0%}, triggers every {config.trigger_interval:g}s)",
        highlight=False,
    )
    from patchguard.policy.transparency.gate_config import UNWITNESSED

    gate = config.transparency.describe() if config.transparency else UNWITNESSED
    out.print(f"transparency: {visible(gate)}", highlight=False, markup=False, soft_wrap=True)
    signature = check_with_host_key(args.file, config.key)
    if signature.ok or signature.missing:
        out.print(f"signature: {visible(signature.reason)}", highlight=False, markup=False)
        return EXIT_CLEAN
    print(f"patchguard: {visible(signature.reason)}", file=sys.stderr)  # one line, unwrapped
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
    import json

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


_INPUT_ARGS = ("manifest", "file", "config", "ledger", "baseline", "key", "out", "root")


def _inputs(args: argparse.Namespace | None) -> str:
    """The files a command was given, to name them when an unexpected failure has no file."""
    given = [str(getattr(args, name)) for name in _INPUT_ARGS if getattr(args, name, None)]
    return f" (reading {', '.join(given)})" if given else ""


def _failure(exc: BaseException, args: argparse.Namespace | None) -> str:
    """One line for any failure: the file and what is wrong, never a traceback."""
    from patchguard.safe_read import os_reason

    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else None
        what = os_reason(exc)
        return f"{where}: {what}" if where else f"{what}{_inputs(args)}"
    if isinstance(exc, MemoryError):
        return f"out of memory{_inputs(args)}: the input is too large"
    if isinstance(exc, RecursionError):
        return f"input nested too deeply{_inputs(args)}"
    return f"unexpected {type(exc).__name__}{_inputs(args)}: {exc}"


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (`| head`): as the Python docs recommend, point
    stdout at /dev/null so the flush at exit cannot fail again, and exit without a word."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_ERROR


def _expected_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line: imported when one is raised, not before."""
    from patchguard.guard.config import ConfigError
    from patchguard.integrity.store import BaselineError
    from patchguard.kernel import KernelAccessError
    from patchguard.safe_read import InputError
    from patchguard.signing import KeyFileError

    return (ValueError, BaselineError, KeyFileError, KernelAccessError, ConfigError, InputError)


def _run(args: argparse.Namespace) -> int:
    from patchguard.text import visible

    handler = getattr(args, "policy_handler", None) or getattr(args, "handler", None)
    if handler is not None:  # the policy commands print their own one-line errors
        return int(handler(args))
    out, err = _consoles()
    sub = getattr(args, "baseline_command", None) or getattr(args, "config_command", None)
    command = COMMANDS[(args.command, sub)]
    try:
        return int(command(args, out, err))
    except _expected_errors() as exc:  # evaluated only when something was raised
        print(f"patchguard: {visible(exc)}", file=sys.stderr)  # one line, never wrapped
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit 0 clean, 1 findings (only), 2 anything else: every failure is
    one line on stderr naming the file and what is wrong; a closed pipe exits quietly."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["--version"]:  # before argparse loads
        print(f"patchguard {__version__}")
        return EXIT_CLEAN
    if words in (["--help"], ["-h"]) and (text := _stored_help()) is not None:
        sys.stdout.write(text)  # as argparse's print_help writes it
        return EXIT_CLEAN
    args: argparse.Namespace | None = None
    try:
        command = _command(argv)
        args = _parser(command, everything=False).parse_args(argv)  # usage error: SystemExit(2)
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as exc:  # the last line of defence: one line, exit 2, no traceback
        from patchguard.text import visible

        print(f"patchguard: {visible(_failure(exc, args))}", file=sys.stderr)
        return EXIT_ERROR


# Commands that run once and leave: their whole process is what a user waits for.
ONE_SHOT = frozenset({"scan", "check"})
# How many allocations the cyclic collector waits between its looks during a one-shot command
# (Python's default: 700). A scan keeps ~60k objects alive and leaves ~2,400 in cycles (3 MB)
# by its end; looking every 700 allocations, ~100 passes, cost it ~25 ms of CPU (630 -> 605).
ONE_SHOT_GC_EVERY = 100_000


def command_line() -> NoReturn:
    """The `patchguard` command (bin/patchguard): main(), then exit with its code. A scan or
    check that ran to its end has closed its kernel handles, joined its threads and written its
    output, which is flushed here; what is left is Python's finalization, freeing every module
    and object one by one (~80 ms of CPU after a scan, a seventh of it), which the kernel does
    at once for a process that exits (os._exit). Any other command, or a failed one, exits the
    ordinary way (main() itself, as tests call it, never leaves the interpreter)."""
    import gc

    words = sys.argv[1:]
    one_shot = _command(words) in ONE_SHOT
    if one_shot:
        gc.set_threshold(ONE_SHOT_GC_EVERY)
    code = main(words)
    if one_shot and code in (EXIT_CLEAN, EXIT_FINDINGS):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # a closed pipe: the ordinary exit, which says nothing either
            sys.exit(code)
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    command_line()
