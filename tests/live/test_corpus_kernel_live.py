"""The truth corpus's members that need more of the kernel than this host gives (modules,
classic tc classifiers, systemd as PID 1): run for real in the lab guest by
tests/lab/test_lab_corpus.py (booted with systemd as init), skipped elsewhere, saying why.
As in test_corpus_live.py: with the shipped manifest approved through a ledger nothing of the
member is above info and each of its hooks names the exception that allows it; every code
change it causes is explained with its owner; past the exception's expiry its hooks are
findings again.

- a live patch as a distribution ships one (tests/lab/modules/pg_klp_version.c, built on the
  host at test time, its .ko in $PATCHGUARD_CORPUS_MODULES), declared by klp-version.toml;
- classic tc classifiers (u32, matchall, flower with gact actions), no BPF: nothing to
  sanction, nothing of them above info;
- a systemd unit (systemd-sandboxed.service) with IPAddressDeny=/IPAddressAllow= and
  DeviceAllow=, whose cgroup firewall and device filter systemd (PID 1) loads, declared by
  systemd.toml;
- a systemd unit (systemd-restrictfs.service) with RestrictFileSystems=, whose BPF LSM
  program a systemd built with its BPF framework loads (Debian 13's 257: the lab boots its
  trixie root image for it, lab/run --root trixie), declared by systemd-restrictfs.toml."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.corpus import (
    MANIFESTS,
    Doc,
    about,
    acting,
    allowed_and_named,
    approved_and_expired,
    baseline_env,
    but_lapsed,
    changes_explained,
    cli,
    lapsed_named,
    lapsed_of,
    loader_release,
    netns,
    programs_held_by,
    run,
    tool,
)

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
KLP = "pg_klp_version"
KLP_SYSFS = Path("/sys/kernel/livepatch") / KLP
TC_NETNS = "pg-corpus-cls"
UNIT = "systemd-sandboxed.service"
# The surfaces that see a live patch: its ftrace ops, its module and the kernel's taint flags
KLP_SCAN: tuple[str, ...] = ("scan", "--records", "--surface", "tracing", "--surface", "modules")
KLP_SCAN += ("--surface", "posture")
EBPF_SCAN = ("scan", "--records", "--surface", "ebpf")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return baseline_env(tmp_path)


def corpus_module(name: str) -> Path:
    """The member's module, built for this kernel by the lab's host side; a skip elsewhere."""
    folder = os.environ.get("PATCHGUARD_CORPUS_MODULES")
    if not folder or not Path("/sys/kernel/livepatch").is_dir():
        pytest.skip("a livepatch module needs a kernel with modules and livepatch (the lab)")
    found = Path(folder) / f"{name}.ko"
    assert found.is_file(), f"{found}: the lab's host side copies it there"
    return found


def _transition_done(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (KLP_SYSFS / "transition").read_text().strip() != "0":
        assert time.monotonic() < deadline, "the livepatch transition did not finish"
        time.sleep(0.2)


@contextlib.contextmanager
def livepatched(module: Path) -> Iterator[None]:
    """The live patch loaded and its transition done; disabled and unloaded on the way out."""
    run("insmod", str(module))
    try:
        _transition_done()
        yield
    finally:
        with contextlib.suppress(OSError, AssertionError):
            (KLP_SYSFS / "enabled").write_text("0\n")
            _transition_done()
        subprocess.run(["rmmod", KLP], check=False, timeout=60)


def test_livepatch_is_quiet_and_named_then_findings_once_expired(
    env: dict[str, str], tmp_path: Path
) -> None:
    module = corpus_module(KLP)
    manifest = MANIFESTS / "klp-version.toml"
    approved, expired = approved_and_expired(tmp_path, manifest, "kernel live patch team")
    with livepatched(module):
        patched = Path("/proc/version").read_text()
        allowed = cli(env, *KLP_SCAN, ledger_path=approved)
        check = cli(env, "check", ledger_path=approved)
        lapsed = cli(env, *KLP_SCAN, ledger_path=expired)
    assert "(gcc" not in patched and patched.startswith("Linux version "), patched
    marker = (KLP, "version_proc_show")
    mine = about(allowed, set(), marker)
    assert {f["technique"] for f in mine} >= {"livepatch", "out-of-tree-module"}, mine
    assert acting(mine) == [], mine
    loud = [f for f in acting(allowed["findings"]) if f["subject"].startswith("taint ")]
    assert loud == [], loud  # K, O and E are the live patch's alone, and declared
    for f in mine:
        if f["severity"] != "info" or f["technique"] == "livepatch":
            assert f["disposition"] == "allowed", f
            assert "(Example Linux (kernel live patches), until " in f["summary"], f
    sites = changes_explained(check, marker)
    (site,) = [f for f in sites if f["subject"].startswith("version_proc_show")]
    assert site["evidence"]["owner"] == f"livepatch {KLP} (vmlinux/version_proc_show,1)", site
    back = {f["technique"] for f in acting(lapsed["findings"]) if KLP in json.dumps(f)}
    back |= {f["technique"] for f in acting(lapsed["findings"]) if f["subject"] == "taint K"}
    assert back >= {"out-of-tree-module", "unsigned-module", "taint-live-patched"}, back


CLASSIFIERS = (
    ("protocol", "ip", "prio", "1", "u32", "match", "ip", "dport", "22", "0xffff"),
    ("prio", "2", "matchall"),
    ("protocol", "ip", "prio", "3", "flower", "ip_proto", "tcp", "dst_port", "80"),
)


def _classify(kind: tuple[str, ...], action: str) -> subprocess.CompletedProcess[str]:
    argv = [tool("tc"), "-n", TC_NETNS, "filter", "add", "dev", "pgc0", "parent", "ffff:"]
    return subprocess.run(
        [*argv, *kind, "action", action], capture_output=True, text=True, timeout=60, check=False
    )


def test_classic_tc_classifiers_need_no_exception(env: dict[str, str]) -> None:
    """u32, matchall and flower classifiers with gact actions are the kernel's own modules
    (signed by Debian) and no BPF: nothing of them may be above info without any exception,
    and scan reads the namespace's tc filters without a gap."""
    with netns(TC_NETNS):
        run("tc", "-n", TC_NETNS, "qdisc", "add", "dev", "pgc0", "ingress")
        for kind in CLASSIFIERS:
            done = _classify(kind, "drop" if kind[-1] != "matchall" else "pass")
            if done.returncode != 0:
                pytest.skip(
                    f"this kernel lacks the {kind[4 if kind[0] == 'protocol' else 2]} classifier "
                    f"or the gact action (the lab has both): {done.stderr.strip()[-200:]}"
                )
        shown = subprocess.run(
            ["tc", "-n", TC_NETNS, "filter", "show", "dev", "pgc0", "ingress"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        scan = cli(env, "scan", "--records")
        check = cli(env, "check")
    assert all(f" {k} " in shown for k in ("u32", "matchall", "flower")), shown
    records = [r for s in scan["surfaces"] for r in s["records"]]
    modules = {r.get("name") for r in records if r.get("kind") == "ProcModule"}
    assert {"cls_u32", "cls_matchall", "cls_flower", "act_gact"} <= modules, sorted(modules)
    marker = ("cls_u32", "cls_matchall", "cls_flower", "act_gact", TC_NETNS)
    assert acting(about(scan, set(), marker)) == [], about(scan, set(), marker)
    unread = [g for g in scan["unavailable"] if g["surface"] == "ebpf"]
    assert TC_NETNS not in json.dumps(unread), unread
    changes_explained(check, marker)


SYSTEMD_PROGRAMS = ("sd_devices", "sd_fw_egress", "sd_fw_ingress")


def _systemd() -> None:
    if Path("/proc/1/comm").read_text().strip() != "systemd":
        pytest.skip("PID 1 is not systemd (the lab boots it with lab/run --init systemd)")


@contextlib.contextmanager
def started(unit: Path) -> Iterator[None]:
    """The unit copied to /run/systemd/system and started; stopped and removed on the way out."""
    placed = Path("/run/systemd/system") / unit.name
    placed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(unit, placed)
    try:
        run(tool("systemctl"), "daemon-reload")
        run("systemctl", "start", unit.name)
        yield
    finally:
        subprocess.run(["systemctl", "stop", unit.name], check=False, timeout=60)
        placed.unlink()
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)


def _unit_programs(doc: Doc) -> dict[int, str]:
    """The programs systemd holds for the unit: those attached to its cgroup."""
    return {
        r["prog_id"]: r["name"]
        for s in doc["surfaces"]
        for r in s["records"]
        if r.get("kind") == "BpfProgram" and UNIT in json.dumps(r["attachments"])
    }


def test_systemd_sandboxing_is_quiet_and_named_then_findings_once_expired(
    env: dict[str, str], tmp_path: Path
) -> None:
    _systemd()
    manifest = MANIFESTS / "systemd.toml"
    loader_release(manifest)  # a stale pin fails here, naming the release and hash to add
    approved, expired = approved_and_expired(tmp_path, manifest, "Debian systemd maintainers")
    with started(MANIFESTS / UNIT):
        bare = cli(env, *EBPF_SCAN)
        allowed = cli(env, *EBPF_SCAN, ledger_path=approved)
        check = cli(env, "check", ledger_path=approved)
        lapsed = cli(env, *EBPF_SCAN, ledger_path=expired)
    unit = _unit_programs(allowed)
    assert sorted(unit.values()) == sorted(SYSTEMD_PROGRAMS), programs_held_by(allowed, 1)
    ids = set(programs_held_by(allowed, 1))
    assert set(unit) <= ids
    loud = acting(about(allowed, ids))
    assert loud == [], [(f["subject"], f["summary"], f["evidence"]) for f in loud]
    said = {i for i in unit if about(bare, {i})}  # the unit's programs scan speaks of
    allowed_and_named(about(allowed, said), said, "Debian (systemd packaging)")
    changes_explained(check, ("pid 1 (systemd)", "/usr/lib/systemd/systemd"))
    # past the expiry, what scan says of systemd's programs is what it says with no ledger,
    # and each of the unit's programs is named as running under the exception that ended
    back = acting(about(lapsed, set(programs_held_by(lapsed, 1))))
    besides = {f["technique"] for f in but_lapsed(back)}
    assert besides == {f["technique"] for f in acting(about(bare, ids))}
    assert not [f for f in about(lapsed, ids) if f["disposition"] == "allowed"], back
    lapsed_named(lapsed, set(unit), "Debian (systemd packaging)")
    assert lapsed_of(bare) == [] and lapsed_of(allowed) == []


RESTRICT_UNIT = "systemd-restrictfs.service"
# The surfaces that can speak of an LSM program: the program, and the ftrace site of the BPF
# trampoline that runs it (bpf_lsm_file_open)
# What scan says of it unsanctioned (medium each): the program is an LSM hook, on a path
# rootkits hook, and bpf_lsm_file_open's ftrace site calls into its trampoline
RESTRICT_FS_BACK = {"lsm-hook", "sensitive-hook", "ftrace-hook-sensitive-function"}
LSM_SCAN = ("scan", "--records", "--surface", "ebpf", "--surface", "tracing")


def _bpf_framework() -> None:
    """Skips unless PID 1 is a systemd that loads BPF LSM programs: built +BPF_FRAMEWORK."""
    _systemd()
    said = subprocess.run(
        [tool("systemctl"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    if "+BPF_FRAMEWORK" not in said:
        pytest.skip(
            f"this systemd is built -BPF_FRAMEWORK: {said.splitlines()[0]} (lab: --root trixie)"
        )


def _lsm_programs(doc: Doc) -> dict[int, str]:
    """prog_id -> name of the LSM programs that systemd (PID 1) holds."""
    return {
        r["prog_id"]: r["name"]
        for s in doc["surfaces"]
        for r in s["records"]
        if r.get("kind") == "BpfProgram"
        and r["prog_type"] == "lsm"
        and 1 in {o["pid"] for o in r["owners"]}
    }


def _refused_sysfs() -> bool:
    """The unit's ExecStartPre was refused a file on sysfs, which its allow-list leaves out."""
    said = Path("/run/restrictfs.read").read_text()
    return "Operation not permitted" in said and "bpf" not in said


def test_restrict_file_systems_lsm_is_quiet_and_named_then_findings_once_expired(
    env: dict[str, str], tmp_path: Path
) -> None:
    _bpf_framework()
    manifest = MANIFESTS / "systemd-restrictfs.toml"
    loader_release(manifest)  # a stale pin fails here, naming the release and hash to add
    approved, expired = approved_and_expired(tmp_path, manifest, "Debian systemd maintainers")
    with started(MANIFESTS / RESTRICT_UNIT):
        assert _refused_sysfs(), Path("/run/restrictfs.read").read_text()  # it enforces
        bare = cli(env, *LSM_SCAN)
        allowed = cli(env, *LSM_SCAN, ledger_path=approved)
        check = cli(env, "check", ledger_path=approved)
        lapsed = cli(env, *LSM_SCAN, ledger_path=expired)
    lsm = _lsm_programs(allowed)
    assert sorted(lsm.values()) == ["restrict_filesystems"], programs_held_by(allowed, 1)
    ids = set(lsm)
    marker = ("bpf_lsm_file_open",)
    loud = acting(about(allowed, ids, marker))
    assert loud == [], [(f["subject"], f["summary"], f["evidence"]) for f in loud]
    allowed_and_named(about(allowed, ids), ids, "Debian (systemd packaging)")
    # its trampoline's ftrace hook is allowed as what the direct call reaches: this program
    hooks = [f for f in about(allowed, set(), marker) if f["surface"] == "tracing"]
    assert hooks, allowed["findings"]
    for f in hooks:
        assert f["disposition"] == "allowed", f
        assert set(f["evidence"]["direct_prog_ids"]) == ids, f
    changes_explained(check, marker)
    # past the expiry, what scan says of the LSM program is what it says with no ledger
    back = acting(about(lapsed, ids, marker))
    assert {f["technique"] for f in back} >= RESTRICT_FS_BACK, back
    assert {f["technique"] for f in but_lapsed(back)} == {
        f["technique"] for f in acting(about(bare, ids, marker))
    }
    lapsed_named(lapsed, ids, "Debian (systemd packaging)")
    assert not [f for f in about(lapsed, ids, marker) if f["disposition"] == "allowed"], back
