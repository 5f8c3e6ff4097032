"""fentry programs: the kernel patches the target's ftrace site to call a BPF trampoline, and
`check` must explain that change by the BPF link that owns it. These VMs' kernel refuses
fentry (EPERM, a policy of this kernel): there the test says so and checks the refusal is one
clear line; the QEMU lab's Debian kernel runs it for real (tests/lab/test_lab_live.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp

from patchguard.kernel.bpf.syscall import BpfError

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
TARGET = "__do_sys_getppid"


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", *args, "--json", "--records"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_fentry_site_change_is_explained_by_its_link(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATCHGUARD_KEY": str(tmp_path / "host.key"),
        "PATCHGUARD_BASELINE": str(tmp_path / "baseline.zip"),
    }
    subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "baseline", "create"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        prog = bp.attach_fentry(TARGET, "pg_t_fentry")
    except BpfError as exc:
        print(f"case: fentry refused by this kernel: {exc}")
        assert exc.errno in (1, 524) and "\n" not in str(exc)
        return
    with prog:
        scan = cli(env, "scan", "--surface", "ebpf")
        ebpf = scan["surfaces"][0]["records"]
        record = next(r for r in ebpf if r.get("prog_id") == prog.prog_id)
        assert record["attach_btf"] == TARGET
        link = next(a for a in record["attachments"] if a["via"] == "link")
        assert link["link_type"] == "tracing" and link["attach_type"] == "trace_fentry"
        assert link["target"] == TARGET
        doc = cli(env, "check")
        sites = [f for f in doc["findings"] if f["technique"] == "ftrace-site"]
        assert sites, doc["findings"]
        assert all(f["disposition"] == "explained" for f in sites), sites
        assert any(
            f["subject"].startswith(TARGET)
            and f"prog {prog.prog_id}" in (f["evidence"]["owner"] or "")
            for f in sites
        ), sites
    doc = cli(env, "check")
    assert not [f for f in doc["findings"] if f["subject"].startswith(TARGET)]


def test_pinned_link_without_its_loader_still_explains_the_site(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATCHGUARD_KEY": str(tmp_path / "host.key"),
        "PATCHGUARD_BASELINE": str(tmp_path / "baseline.zip"),
    }
    subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "baseline", "create"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        prog = bp.attach_fentry(TARGET, "pg_t_pinned")
    except BpfError as exc:
        pytest.skip(f"fentry refused by this kernel ({exc}); the lab runs this")
    pin = os.path.join(bp.bpffs(), f"patchguard-test-{os.getpid()}-fentry-link")
    try:
        bp.bpf.obj_pin(prog.fds[0], pin)
        prog.close()  # the loader's fds are gone: only the pin keeps the link
        doc = cli(env, "check")
        sites = [f for f in doc["findings"] if f["subject"].startswith(TARGET)]
        assert sites and all(f["disposition"] == "explained" for f in sites), sites
        assert any(pin in (f["evidence"]["owner"] or "") for f in sites), [
            f["evidence"]["owner"] for f in sites
        ]
    finally:
        if os.path.exists(pin):
            os.unlink(pin)
    assert bp.wait_gone(prog.prog_id)
    doc = cli(env, "check")
    assert not [f for f in doc["findings"] if f["subject"].startswith(TARGET)]


def test_lsm_program_is_reported_with_its_hook(tmp_path: Path) -> None:
    env = dict(os.environ)
    try:
        prog = bp.attach_lsm("file_open", "pg_t_lsm")
    except BpfError as exc:
        print(f"case: LSM programs refused by this kernel: {exc}")
        assert exc.errno in (1, 22, 524) and "\n" not in str(exc)
        return
    with prog:
        doc = cli(env, "scan", "--surface", "ebpf")
    record = next(r for r in doc["surfaces"][0]["records"] if r.get("prog_id") == prog.prog_id)
    assert record["prog_type"] == "lsm" and record["attach_btf"] == "bpf_lsm_file_open"
    assert [a["attach_type"] for a in record["attachments"]] == ["lsm_mac"]
    techniques = {
        f["technique"] for f in doc["findings"] if f["evidence"].get("prog_id") == prog.prog_id
    }
    assert {"lsm-hook", "sensitive-hook"} <= techniques


def test_guard_kept_running_explains_an_fentry_attached_after_it_started(tmp_path: Path) -> None:
    """The guard keeps one kernel handle for its whole life. Its sweeps must see the BPF
    trampoline that an fentry attached since creates (a new kallsyms line): read once at
    start, the trampoline would be code no symbol names, and the site tampering."""
    import io

    from support.guard_in_process import in_process_guard

    from patchguard.guard.config import parse_config
    from patchguard.integrity.check import capture
    from patchguard.integrity.store import save_baseline
    from patchguard.kernel import Kernel
    from patchguard.signing import HostKey

    key, baseline = tmp_path / "host.key", tmp_path / "baseline.zip"
    kernel = Kernel()
    try:
        save_baseline(capture(kernel).baseline, baseline, HostKey.load_or_create(key))
    finally:
        kernel.close()
    body = f'[guard]\nbaseline = "{baseline}"\nkey = "{key}"\nsweep_mean = 600\n'
    guard = in_process_guard(parse_config(body, tmp_path / "guard.toml"), io.StringIO())
    try:
        assert [f for f in guard.check_baseline() if f.severity.label == "critical"] == []
        try:
            prog = bp.attach_fentry(TARGET, "pg_t_guarded")
        except BpfError as exc:
            pytest.skip(f"fentry refused by this kernel ({exc}); the lab runs this")
        with prog:
            found = guard.check_baseline()
        mine = [f for f in found if f.subject.startswith(TARGET)]
        assert mine and all(f.disposition == "explained" for f in mine), found
    finally:
        guard.kernel.close()
