"""The truth corpus's tools (tests/live/test_corpus_live.py, test_corpus_kernel_live.py): a
ledger where a reviewer approved a shipped manifest, the same exception past its expiry
(requested and approved days ago, expiring at 00:00 UTC today, its expiry recorded in the
ledger), patchguard run by its CLI against either, the findings a corpus member's own markers
pick out and what must hold of them, and the tools the members are run with."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import load_manifest
from patchguard.signing import HostKey

MANIFESTS = Path(__file__).resolve().parents[2] / "src/patchguard/policy/manifests"
Doc = dict[str, Any]
# A module a member loads (a live patch, a tc classifier) after the baseline: its text is not
# in the baseline, so check cannot verify it and says so (info). No code change to explain.
UNVERIFIED_MODULE = "module-not-in-baseline"
LAPSED = "exception-lapsed"  # a program still running as an exception that ended declared it


def ledger(folder: Path, manifest: Path, vendor: str, expired: bool = False) -> Path:
    """A ledger in `folder` (made for it) where a security team approved `manifest` on a
    request by a key of `vendor`: for 30 days from now or, `expired`, from four days ago
    until 00:00 UTC today, with the expiry entry the guard would write."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ledger.db"
    owner = HostKey.load_or_create(folder / "owner.key")
    requester = HostKey.load_or_create(folder / "vendor.key")
    approver = HostKey.load_or_create(folder / "approver.key")
    now = datetime.now(UTC)
    start = now - timedelta(days=4) if expired else now
    until = now.date() if expired else date.today() + timedelta(days=30)
    ops.init_ledger(path, owner, "SRE team", now=start)
    ops.grant_key(path, owner, requester.public_key_bytes(), vendor, [], now=start)
    ops.grant_key(path, owner, approver.public_key_bytes(), "Security", ["approve"], now=start)
    asked = ops.request_exception(path, requester, load_manifest(manifest), until, now=start)
    ops.decide(path, approver, asked.entry.seq, True, "corpus member reviewed", now=start)
    if expired:
        assert ops.record_expiries(path, owner), "the exception is past its expiry"
    return path


def approved_and_expired(folder: Path, manifest: Path, vendor: str) -> tuple[Path, Path]:
    """Two ledgers under `folder` (see `ledger`): one where `manifest`'s exception is in force,
    one where it expired; a member's test runs each scan against both."""
    return (
        ledger(folder / "approved", manifest, vendor),
        ledger(folder / "expired", manifest, vendor, expired=True),
    )


def cli(env: dict[str, str], *args: str, ledger_path: Path | None = None) -> Doc:
    """`patchguard <args> --json` (exit 0 or 1), with PATCHGUARD_LEDGER=`ledger_path` or the
    environment's (base_env: none); its JSON document."""
    run_env = {**env, "PATCHGUARD_LEDGER": str(ledger_path)} if ledger_path else env
    done = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", *args, "--json"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), f"patchguard {' '.join(args)}: {done.stderr[-2000:]}"
    doc: Doc = json.loads(done.stdout)
    return doc


def base_env(folder: Path) -> dict[str, str]:
    """Host key and baseline of the corpus run, in `folder` (never the machine's own), and a
    ledger path where there is none: no exception unless a test gives its ledger."""
    return {
        **os.environ,
        "PATCHGUARD_LEDGER": str(folder / "no-ledger.db"),
        "PATCHGUARD_KEY": str(folder / "host.key"),
        "PATCHGUARD_BASELINE": str(folder / "baseline.zip"),
    }


def programs_held_by(doc: Doc, pid: int) -> dict[int, str]:
    """prog_id -> name of the BPF programs that process `pid` holds, from scan's records."""
    return {
        r["prog_id"]: r["name"]
        for s in doc["surfaces"]
        for r in s["records"]
        if r.get("kind") == "BpfProgram" and pid in {o["pid"] for o in r["owners"]}
    }


def about(doc: Doc, prog_ids: set[int], markers: tuple[str, ...] = ()) -> list[Doc]:
    """The findings about these programs, or whose text holds one of `markers`."""
    return [
        f
        for f in doc["findings"]
        if f["evidence"].get("prog_id") in prog_ids or any(m in json.dumps(f) for m in markers)
    ]


def acting(findings: list[Doc]) -> list[Doc]:
    """Those above info that no exception allows: what would page someone."""
    return [f for f in findings if f["severity"] != "info" and f["disposition"] != "allowed"]


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: scripts/setup --dev installs it")
    return found


def run(*argv: str) -> str:
    """Run a command that must succeed; its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}{done.stderr}"
    return done.stdout


def baseline_env(folder: Path) -> dict[str, str]:
    """base_env with a baseline of this kernel taken now, before the member starts (so `check`
    sees the code changes it causes)."""
    found = base_env(folder)
    done = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "baseline", "create"],
        env=found,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return found


def allowed_and_named(findings: list[Doc], prog_ids: set[int], vendor: str) -> None:
    """Every program has a finding that says which exception allows it, and whose it is."""
    for prog_id in prog_ids:
        named = [f for f in findings if f["evidence"].get("prog_id") == prog_id]
        assert named, f"prog {prog_id} is shown, not hidden"
        for f in named:
            assert f["disposition"] == "allowed", f
            assert re.match(
                rf"allowed by exception #\d+ \({re.escape(vendor)}, until ", f["summary"]
            )


def lapsed_named(doc: Doc, prog_ids: set[int], vendor: str) -> None:
    """Past the expiry (support.corpus.ledger's: 00:00 UTC today), each program has exactly one
    `exception-lapsed` (low, not allowed) that names the exception, its vendor and the date."""
    today = datetime.now(UTC).date().isoformat()
    assert prog_ids, "no program to find lapsed"
    for prog_id in prog_ids:
        named = [f for f in lapsed_of(doc) if f["evidence"]["prog_id"] == prog_id]
        assert len(named) == 1, (prog_id, lapsed_of(doc))
        (f,) = named
        ev = f["evidence"]
        assert (f["severity"], f["disposition"], ev["lapse"]) == ("low", "suspicious", "expired")
        assert ev["date"] == today, f
        said = rf"exception #{ev['exception']} \({re.escape(vendor)}, .* expired on {today}; "
        assert re.match(said, f["summary"]), f


def lapsed_of(doc: Doc) -> list[Doc]:
    """The document's exception-lapsed findings."""
    return [f for f in doc["findings"] if f["technique"] == LAPSED]


def but_lapsed(findings: list[Doc]) -> list[Doc]:
    """The findings other than exception-lapsed: what scan says of a member past its expiry
    besides the lapse, to be what it says with no ledger."""
    return [f for f in findings if f["technique"] != LAPSED]


def changes_explained(check: Doc, markers: tuple[str, ...]) -> list[Doc]:
    """The code changes `check` finds that name the member are explained, each with an owner,
    and none is tampering; they are returned."""
    mine = [f for f in about(check, set(), markers) if f["technique"] != UNVERIFIED_MODULE]
    for f in mine:
        assert f["disposition"] == "explained" and f["severity"] == "info", f
        assert f["evidence"].get("owner"), f
    return mine


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """A network namespace `name` with a veth pair pgc0/pgc1 in it, deleted on the way out."""
    if Path(f"/run/netns/{name}").exists():
        pytest.fail(f"network namespace {name} exists already: delete it (not this test's)")
    run(tool("ip"), "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "add", "pgc0", "type", "veth", "peer", "name", "pgc1")
        yield
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=60)


def interrupt(tool_process: subprocess.Popen[Any]) -> None:
    """Stop a tracer as its user does (SIGINT: it prints what it gathered and detaches), and
    kill it if it has not ended within a minute."""
    tool_process.send_signal(signal.SIGINT)
    try:
        tool_process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        tool_process.kill()
        tool_process.wait()


def installed_release(path: str) -> str:
    """`<package> <version>` of the Debian package that installed `path` (dpkg's database
    names merged-/usr files by their /lib, /bin or /sbin path), or why it is unknown."""
    for name in (path, path.removeprefix("/usr")):
        found = subprocess.run(["dpkg", "-S", name], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            package = found.stdout.split(":", 1)[0]
            version = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", package],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            return f"{package} {version}"
    return "a file no Debian package installed"


def loader_release(manifest: Path) -> str:
    """The release of `manifest`'s loader this machine runs, matched by its executable's
    sha256; when it matches none, a failure that says which pin went stale: the package
    version installed here, its hash, and the line to add once it is reviewed."""
    (loader,) = {p.loader for p in load_manifest(manifest).bpf_programs if p.loader}
    if not Path(loader.path).is_file():
        pytest.fail(f"{loader.path} is not installed: scripts/setup --dev installs it")
    digest = hashlib.sha256(Path(loader.path).read_bytes()).hexdigest()
    pins = loader.releases or (("(one build)", loader.sha256),)
    for release, pinned in pins:
        if pinned == digest:
            return release
    installed = installed_release(loader.path)
    listed = ", ".join(f"{release} = {pinned[:12]}..." for release, pinned in pins)
    pytest.fail(
        f"{manifest.name}: {loader.path} here is {installed}, sha256 {digest}, which no pin "
        f"matches ({listed}): review it, then add "
        f'"{installed.rsplit(" ", 1)[-1]}" = "{digest}" to its loader\'s releases'
    )
