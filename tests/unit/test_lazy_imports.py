"""Which modules a command imports, asked of a fresh interpreter running it: each command pays
only for what it uses (the whole-process cost bench/scan.py --process measures).

The assertions name the mechanism, not this machine: pyroute2 is imported exactly when the
netfilter surface asked the kernel for its hook lists (not when the kernel's .config says the
subsystem is not built; this machine's kernel is such a one, the lab's may not be), pyelftools
exactly when the memory reader is /proc/kcore (here it is eBPF), capstone only when the syscall
dispatch code is disassembled, rich never for JSON, cryptography never without a ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MARK = "MODULES:"
RUN = (
    "import json, sys\n"
    "from patchguard.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit:\n"
    "    pass\n"
    f"print({MARK!r} + json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
)
HEAVY = {"rich", "pyroute2", "elftools", "capstone", "cryptography"}


def imported(tmp_path: Path, *args: str) -> tuple[set[str], str]:
    """(top-level and patchguard modules imported, stdout) of `patchguard *args`."""
    env = {
        "PATCHGUARD_LEDGER": str(tmp_path / "no-ledger.db"),
        "PATCHGUARD_KEY": str(tmp_path / "no-host.key"),  # no key: the report is sealed unsigned
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith(MARK))
    names: list[str] = json.loads(line[len(MARK) :])
    tops = {n.split(".")[0] for n in names}
    return tops | {n for n in names if n.startswith("patchguard.")}, done.stdout


def test_version_imports_nothing_but_the_cli(tmp_path: Path) -> None:
    modules, out = imported(tmp_path, "--version")
    assert out.startswith("patchguard ")
    assert not modules & HEAVY
    assert {m for m in modules if m.startswith("patchguard.")} == {"patchguard.cli"}


def test_help_lists_every_command_without_the_heavy_libraries(tmp_path: Path) -> None:
    modules, out = imported(tmp_path, "--help")
    assert "ledger" in out and "scan" in out
    assert not modules & {"pyroute2", "elftools", "capstone", "rich"}


def test_scan_of_one_surface_imports_only_that_surface(tmp_path: Path) -> None:
    modules, out = imported(tmp_path, "scan", "--json", "--surface", "posture")
    assert json.loads(out)["surfaces"][0]["name"] == "posture"
    assert not modules & HEAVY
    assert not {"patchguard.policy.cli", "patchguard.integrity", "patchguard.guard"} & modules


def test_scan_json_imports_a_library_only_where_it_is_used(tmp_path: Path) -> None:
    modules, out = imported(tmp_path, "scan", "--json", "--fail-on", "critical")
    doc: dict[str, Any] = json.loads(out)
    # pyroute2 is the ebpf surface's (XDP and tc attach points) and the sockets surface's
    # (sock_diag requests) in every scan of them; elftools is /proc/kcore's and, when a uprobe
    # is there to resolve, the ebpf surface's: a scan of posture alone imports neither (above).
    assert "elftools" in modules or doc["memory_reader"] != "kcore"
    assert not modules & {"rich", "cryptography"}
    assert not {"patchguard.policy.cli", "patchguard.integrity", "patchguard.guard"} & modules
    assert "patchguard.policy.match" not in modules  # no ledger: no exception matching
    assert all("records" not in s for s in doc["surfaces"])  # only with --records


def test_records_only_when_asked(tmp_path: Path) -> None:
    _, out = imported(tmp_path, "scan", "--json", "--records", "--surface", "posture")
    (posture,) = json.loads(out)["surfaces"]
    assert posture["records"] and all("kind" in r for r in posture["records"])


def test_the_cli_role_choices_are_the_ledger_rules_roles() -> None:
    from patchguard.policy import cli, rules

    assert cli.ROLES == rules.ROLES
