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
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from patchguard import stored_help

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
# The fleet server's and client's libraries: no scan, check or help needs them.
SERVER = {"sqlalchemy", "fastapi", "uvicorn", "starlette", "httpx", "alembic", "psycopg"}
# What the command modules' handlers use, imported only when a handler runs.
HANDLERS = {
    "patchguard.policy.ledger",
    "patchguard.policy.exceptions",
    "patchguard.signing",
    "patchguard.sealed_report",
    "patchguard.fleet.client",
    "patchguard.server.db",
    "patchguard.text",
}
# pyroute2's package __init__ imports these; the modules a scan uses do not.
PYROUTE2_INIT_ONLY = {"pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.conntrack", "pyroute2.iwutil"}


def imported(tmp_path: Path, *args: str) -> tuple[set[str], str]:
    """(top-level and patchguard modules imported, stdout) of `patchguard *args`."""
    names, out = imported_all(tmp_path, *args)
    tops = {n.split(".")[0] for n in names}
    return tops | {n for n in names if n.startswith("patchguard.")}, out


def imported_all(
    tmp_path: Path, *args: str, columns: int = 80, env: dict[str, str] | None = None
) -> tuple[set[str], str]:
    """(every module imported, stdout) of `patchguard *args` in a fresh interpreter; `env`
    adds to or replaces the environment it runs with."""
    env = {
        "PATCHGUARD_LEDGER": str(tmp_path / "no-ledger.db"),
        "PATCHGUARD_KEY": str(tmp_path / "no-host.key"),  # no key: the report is sealed unsigned
        "PATH": "/usr/bin:/bin",
        "COLUMNS": str(columns),  # the width help is wrapped at
        **(env or {}),
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
    return set(names), done.stdout


def interpreter_modules(tmp_path: Path) -> set[str]:
    """What the interpreter imports by itself (site, the venv's .pth files): not a command's."""
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    )
    return set(json.loads(done.stdout))


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
    # pyroute2 is the ebpf surface's (XDP and tc attach points) in every scan of it; elftools
    # is /proc/kcore's and, when a uprobe is there to resolve, the ebpf surface's: a scan of
    # posture alone imports neither (above).
    assert "elftools" in modules or doc["memory_reader"] != "kcore"
    assert not modules & {"rich", "cryptography"}
    # the sock_diag requests are stored encoded: not pyroute2's socket module and its asyncio
    assert not modules & {"pyroute2.netlink.nlsocket", "asyncio"}
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


def test_help_at_the_stored_width_imports_the_stored_text_only(tmp_path: Path) -> None:
    names, out = imported_all(tmp_path, "--help", columns=stored_help.COLUMNS)
    assert "verify-report" in out and "fetch-policy" in out and "witness" in out
    if tuple(sys.version_info[:2]) != stored_help.PYTHON:
        pytest.skip(f"stored_help.py was rendered by Python {stored_help.PYTHON}")
    patchguard = {n for n in names if n.startswith("patchguard")}
    assert patchguard == {"patchguard", "patchguard.cli", "patchguard.stored_help"}
    assert "argparse" not in names


def test_help_at_another_width_imports_the_cli_and_argparse_only(tmp_path: Path) -> None:
    names, out = imported_all(tmp_path, "--help", columns=stored_help.COLUMNS + 43)
    assert "verify-report" in out and "fetch-policy" in out and "witness" in out
    assert "argparse" in names
    # the other modules' groups are listed from cli.GROUPS, not imported
    assert {n for n in names if n.startswith("patchguard")} == {
        "patchguard",
        "patchguard.arguments",
        "patchguard.cli",
        "patchguard.stored_help",  # asked which width it was rendered at
    }
    extra = {n.split(".")[0] for n in names - interpreter_modules(tmp_path)}
    # argparse and what it loads for help (re, gettext, shutil for the width); nothing for
    # the handlers: no pathlib, typing, platform, logging, datetime, the ledger or keys
    assert not extra & {"pathlib", "typing", "platform", "logging", "datetime", "sqlite3"}
    assert not extra & (HEAVY | SERVER)


def test_a_command_groups_help_imports_no_handler_library(tmp_path: Path) -> None:
    for group in ("ledger", "exceptions", "server", "witness", "enrol", "verify-report"):
        names, out = imported_all(tmp_path, group, "--help")
        assert out.startswith(f"usage: patchguard {group}")
        assert not names & HANDLERS, group
        assert not {n.split(".")[0] for n in names} & (HEAVY | SERVER), group


def test_scan_json_needs_no_server_fleet_or_key_library(tmp_path: Path) -> None:
    names, out = imported_all(tmp_path, "scan", "--json", "--fail-on", "critical")
    assert json.loads(out)["command"] == "scan"
    tops = {n.split(".")[0] for n in names}
    assert not tops & (SERVER | {"rich", "cryptography"})
    assert not {n for n in names if n.startswith(("patchguard.server", "patchguard.fleet"))}
    # pyroute2's modules are imported without its package __init__ (kernel/pyroute2_modules)
    assert not names & PYROUTE2_INIT_ONLY


def test_netfilter_asks_no_module_loading_dump_of_a_kernel_without_modules(
    tmp_path: Path,
) -> None:
    names, out = imported_all(
        tmp_path, "scan", "--json", "--surface", "modules", "--surface", "netfilter"
    )
    surfaces = json.loads(out)["surfaces"]
    modules_gaps = json.loads(out)["unavailable"]
    no_modules = any("/proc/modules absent" in g["reason"] for g in modules_gaps)
    netfilter = next(s for s in surfaces if s["name"] == "netfilter")
    hook_dump_asked = netfilter["counts"].get("hooks", 0) > 0 or not any(
        "not asked" in g["reason"] for g in modules_gaps if g["surface"] == "netfilter"
    )
    # the prepare step's dump only loads modules: with none loadable it is not asked, so
    # pyroute2 is imported exactly when the hook lists themselves are dumped
    if no_modules and not hook_dump_asked:
        assert not any(n.startswith("pyroute2") for n in names)


def test_pyroute2_modules_load_alone_and_the_package_whole_on_first_use() -> None:
    code = (
        "import sys\n"
        "from patchguard.kernel.pyroute2_modules import without_package_init\n"
        "without_package_init()\n"
        "from pyroute2.netlink.diag import inet_diag_req\n"
        "from pyroute2.iproute.linux import IPRoute\n"
        "alone = 'pyroute2.ndb.main' in sys.modules\n"
        "from pyroute2 import IPRoute as again, NDB\n"
        "import pyroute2\n"
        "print(alone, again is IPRoute, pyroute2.NDB is NDB, 'pyroute2.ndb.main' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == ["False", "True", "True", "True"]


# What only a change needs: explaining changed bytes (explain.py and the x86 decoders, the
# syscall dispatch, the tracepoint keys), who may patch code (owners: the ebpf and tracing
# surfaces), and the kernel_text surface's own scan of ftrace sites.
EXPLAINERS = {
    "patchguard.integrity.explain",
    "patchguard.integrity.owners",
    "patchguard.integrity.tracepoint_keys",
    "patchguard.x86.dispatch",
    "patchguard.x86.insn",
    "patchguard.surfaces.kernel_text",
    "patchguard.surfaces.ftrace_sites",
    "patchguard.kernel.ftrace_records",
}
# A check runs one thread beside its reads: a plain thread, not a pool and its logging.
POOL = {"concurrent.futures", "logging"}


def test_importing_check_imports_no_explainer_pool_or_module_layout() -> None:
    code = (
        "import json, sys\n"
        "import patchguard.integrity.check\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    names = set(json.loads(done.stdout))
    assert "patchguard.integrity.check" in names
    assert not names & (EXPLAINERS | POOL | {"patchguard.kernel.module_layout"})
    assert not {n.split(".")[0] for n in names} & (HEAVY | SERVER)


def test_the_checked_surface_is_named_as_the_kernel_text_surface() -> None:
    from patchguard.integrity.check import CheckedText
    from patchguard.integrity.module_regions import NAME
    from patchguard.surfaces.kernel_text import KernelTextSurface

    assert (CheckedText.name, CheckedText.title) == (
        KernelTextSurface.name,
        KernelTextSurface.title,
    )
    assert KernelTextSurface.name == NAME


def test_the_thread_beside_a_check_hands_its_error_to_the_check(tmp_path: Path) -> None:
    from patchguard.integrity.check import _Beside
    from patchguard.integrity.store import BaselineError

    refused = BaselineError(tmp_path / "baseline.zip", "region core_text altered after signing")

    def verify_stored() -> None:
        raise refused

    with pytest.raises(BaselineError) as raised:
        _Beside(verify_stored).result()
    assert raised.value is refused
    _Beside(lambda: None).result()  # nothing raised: nothing to hand on


def checked(tmp_path: Path) -> tuple[set[str], dict[str, Any]]:
    """(modules imported, the report) of `check --json` against a baseline taken just before."""
    base, key = tmp_path / "baseline.zip", tmp_path / "host.key"
    made = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "baseline", "create", "--out", str(base),
         "--key", str(key)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    names, out = imported_all(
        tmp_path, "check", "--json", "--baseline", str(base), "--key", str(key)
    )
    return names, json.loads(out)


def test_check_imports_what_explains_a_change_only_when_code_changed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a baseline reads kernel memory: root only")
    names, doc = checked(tmp_path)
    (text,) = doc["surfaces"]
    changed = text["counts"]["changed_pages"] > 0
    assert ("patchguard.integrity.owners" in names) == changed
    assert ("patchguard.integrity.explain" in names) == changed
    assert not {n.split(".")[0] for n in names} & (SERVER | {"rich"})


def test_check_with_nothing_changed_keeps_its_slim_set(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a baseline reads kernel memory: root only")
    # Other tests on this kernel attach programs that flip jump labels: a change between
    # the baseline and the check is taken again, a few times, before the test gives up.
    for attempt in range(3):
        names, doc = checked(tmp_path / str(attempt))
        if doc["surfaces"][0]["counts"]["changed_pages"] == 0:
            break
    else:
        pytest.skip("code changed between baseline and check three times (programs attaching)")
    assert not names & (EXPLAINERS | POOL)
    assert not {n.split(".")[0] for n in names} & (HEAVY - {"cryptography"} | SERVER)
    # struct module's layout (from BTF) exactly when a module is live to read
    live = Path("/proc/modules").exists() and " Live " in Path("/proc/modules").read_text()
    assert ("patchguard.kernel.module_layout" in names) == live


# What no check process needs: the atomic writer's tempfile (no key is made) and the package
# `__init__` of cryptography's serialization with its SSH key support: the key is read by the
# function that package exports, taken from its binding module.
CHECK_NEVER = {"tempfile", "cryptography.hazmat.primitives.serialization.ssh"}
# ... and what a check with nothing changed needs none of, besides the explainers (who owns a
# change may be told by a manifest: TOML).
UNCHANGED_NEVER = {"patchguard.atomic", "patchguard.kernel.module_layout", "tomllib"}


@pytest.mark.usefixtures("live_kernel")
def test_a_check_process_imports_no_writer_and_unchanged_no_explainer(
    tmp_path: Path,
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PATCHGUARD_KEY": str(tmp_path / "keys" / "host.key"),
        "PATCHGUARD_BASELINE": str(tmp_path / "baseline.zip"),
    }
    made = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "baseline", "create"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    names, out = imported_all(tmp_path, "check", "--json", env=env)
    doc = json.loads(out)
    assert doc["integrity"]["signature"]  # sealed by the key the check read
    assert "cryptography.hazmat.primitives.asymmetric.ed25519" in names
    assert not names & (CHECK_NEVER | POOL)
    assert not {n.split(".")[0] for n in names} & (SERVER | {"rich"})
    if doc["surfaces"][0]["counts"]["changed_pages"]:
        pytest.skip("another process patched kernel text since the baseline: explainers ran")
    assert not names & (UNCHANGED_NEVER | EXPLAINERS)
