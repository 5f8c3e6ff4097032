"""`patchguard baseline create` and `patchguard check` on the running kernel: unchanged code is
clean, the kernel's own patching when a program attaches is explained byte for byte, and a
baseline that cannot be trusted is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from support import bpfprogs as bp

from patchguard.signing import HostKey

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATCHGUARD_KEY": str(tmp_path / "keys" / "host.key"),
        "PATCHGUARD_BASELINE": str(tmp_path / "baseline.zip"),
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "patchguard.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    out = cli(env, "check", "--json")
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


@pytest.fixture
def baseline(env: dict[str, str]) -> Path:
    out = cli(env, "baseline", "create")
    assert out.returncode == 0, out.stderr
    assert "baseline written to" in out.stdout
    return Path(env["PATCHGUARD_BASELINE"])


def said(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """What a failed assertion shows: each finding's severity, disposition, subject, summary."""
    return [(f["severity"], f["disposition"], f["subject"], f["summary"]) for f in doc["findings"]]


def unexplained(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings other than the kernel's own explained patching. Other software on the machine
    (QEMU's io_uring, a tracer) can flip a static key between two checks: that is shown as
    explained, and is not what these tests are about."""
    return [f for f in doc["findings"] if f["disposition"] != "explained"]


def test_unchanged_kernel_checks_clean_twice(env: dict[str, str], baseline: Path) -> None:
    for _ in range(2):
        code, doc = check(env)
        assert code == 0 and doc["command"] == "check", said(doc)
        assert unexplained(doc) == []
        counts = doc["surfaces"][0]["counts"]
        assert counts["bytes"] > 18_000_000 and counts["tampering"] == 0
        # on a quiet machine nothing changes at all; anything that did is explained
        assert counts["changed_pages"] == 0 or counts["explained"] > 0
    assert Path(env["PATCHGUARD_KEY"]).stat().st_mode & 0o777 == 0o600
    assert baseline.stat().st_mode & 0o777 == 0o600


def _explained(doc: dict[str, Any]) -> dict[str, str]:
    assert all(f["disposition"] == "explained" for f in doc["findings"]), doc["findings"]
    return {f["subject"]: f["technique"] for f in doc["findings"]}


def test_tracepoint_attach_is_explained_then_clean(env: dict[str, str], baseline: Path) -> None:
    with bp.attach_tracepoint("syscalls", "sys_enter_kill"):
        code, doc = check(env)
        found = _explained(doc)
    assert code == 0, said(doc)
    # The jump label in syscall_trace_enter flips NOP -> JMP, and the tracepoint's static call
    # (trampoline, and the inline call site) is retargeted. Seen on 6.18-fc: the label at
    # syscall_trace_enter+0xe2, 66 90 -> eb 61; Debian's 6.1 (the lab) names the function
    # syscall_trace_enter.constprop.0.
    labels = [
        f
        for f in doc["findings"]
        if f["technique"] == "jump-label" and f["subject"].startswith("syscall_trace_enter")
    ]
    assert labels, found
    old, new = labels[0]["evidence"]["old"], labels[0]["evidence"]["new"]
    assert old in ("66 90", "0f 1f 44 00 00") and new[:2] in ("eb", "e9"), (old, new)
    assert found.get("__SCT__tp_func_sys_enter+0x0") == "static-call-trampoline", found
    code, doc = check(env)
    assert code == 0 and unexplained(doc) == [], said(doc)
    assert not set(found) & {f["subject"] for f in doc["findings"]}, "still patched after detach"


def test_raw_tracepoint_link_is_explained_then_clean(env: dict[str, str], baseline: Path) -> None:
    with bp.attach_raw_tracepoint("sys_enter") as prog:
        code, doc = check(env)
        found = _explained(doc)
    assert code == 0 and found, ("attaching to sys_enter patches the kernel's code", said(doc))
    assert bp.wait_gone(prog.prog_id)
    code, doc = check(env)
    assert code == 0 and unexplained(doc) == [], said(doc)
    assert not set(found) & {f["subject"] for f in doc["findings"]}, "still patched after detach"


def _sys_enter_sites(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The explained sites attaching to sys_enter changes: its jump labels in
    syscall_trace_enter, its static call sites there and its trampoline."""
    where = ("syscall_trace_enter", "__SCT__tp_func_sys_enter")
    explained = [f for f in doc["findings"] if f["disposition"] == "explained"]
    return [f for f in explained if f["subject"].startswith(where)]


def test_tracepoint_sites_name_the_tracepoint_and_its_programs(
    env: dict[str, str], baseline: Path
) -> None:
    """Every explained site names tracepoint sys_enter, read from its struct tracepoint (this
    kernel has no data symbols), and the program on it with its id; no key is named after
    the symbol below it."""
    with bp.attach_tracepoint("syscalls", "sys_enter_kill") as perf:
        _, by_perf = check(env)
    with bp.attach_raw_tracepoint("sys_enter") as raw:
        _, by_link = check(env)
    for doc, prog, via in ((by_perf, perf, "via perf event"), (by_link, raw, "via link")):
        sites = _sys_enter_sites(doc)
        assert {f["technique"] for f in sites} >= {"jump-label", "static-call-trampoline"}
        for f in sites:
            assert "tracepoint sys_enter" in f["summary"], f
            owner = f["evidence"]["owner"]
            assert owner.startswith("tracepoint sys_enter: "), f
            assert f"BPF prog {prog.prog_id} " in owner and via in owner, f
        assert not any("__start_once" in f["summary"] for f in doc["findings"])


def module_tracepoint() -> tuple[str, str, str]:
    """(module, category, event) of a tracepoint that a loaded module defines (ext4's when it
    is a module): its static key's jump sites and its static call trampoline are in that
    module's text."""
    if not Path("/proc/modules").exists():
        pytest.skip("this kernel has no loadable modules (no /proc/modules): the lab runs this")
    found: list[tuple[str, str, str]] = []
    for line in Path("/proc/kallsyms").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2].startswith("__SCT__tp_func_"):
            event, module = parts[2].removeprefix("__SCT__tp_func_"), parts[3].strip("[]")
            found += [(module, d.parent.name, event) for d in bp.TRACEFS.glob(f"events/*/{event}")]
    if not found:
        pytest.skip("no loaded module defines a tracepoint here")
    return min(found, key=lambda f: (f[0] != "ext4", f))


def test_module_tracepoint_attach_is_explained_in_module_text(
    env: dict[str, str], baseline: Path
) -> None:
    module, category, event = module_tracepoint()
    with bp.attach_tracepoint(category, event) as prog:
        code, doc = check(env)
        found = _explained(doc)
    assert code == 0, said(doc)
    for f in doc["findings"]:  # the module's tracepoint, read from its struct in module data
        if f["subject"].endswith(f" [{module}]"):
            assert f["evidence"]["owner"].startswith(f"tracepoint {event}: "), f
            assert f"BPF prog {prog.prog_id} " in f["evidence"]["owner"], f
    in_module = {s: t for s, t in found.items() if s.endswith(f" [{module}]")}
    assert "jump-label" in in_module.values(), found  # the key's site in the module's code
    assert in_module.get(f"__SCT__tp_func_{event}+0x0 [{module}]") == "static-call-trampoline"
    code, doc = check(env)
    assert code == 0 and unexplained(doc) == [], said(doc)
    assert not set(found) & {f["subject"] for f in doc["findings"]}, "still patched after detach"


def _rewrite(path: Path, change: dict[str, bytes | None]) -> None:
    """Rewrite the zip with some members replaced (or removed, for None); every other member
    is copied with its own ZipInfo (name, compression, timestamp), so only `change` differs."""
    with zipfile.ZipFile(path) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    assert set(change) <= {i.filename for i, _ in members}, change.keys()
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            new = change.get(info.filename, data)
            if new is not None:
                zf.writestr(info, new)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize("tamper", ["flip", "nosig", "truncate", "manifest"])
def test_tampered_baseline_is_refused(env: dict[str, str], baseline: Path, tamper: str) -> None:
    with zipfile.ZipFile(baseline) as zf:
        stream = zf.read("regions/core_text.zlib")
        manifest = zf.read("manifest.json")
    fingerprint = HostKey.load(Path(env["PATCHGUARD_KEY"])).fingerprint()
    if tamper == "flip":  # one byte of the stored zlib stream, zip CRC recomputed
        _rewrite(baseline, {"regions/core_text.zlib": _flip(stream, 4096 * 7 + 3)})
        message = (
            "region core_text: stored data does not match its manifest (changed after it was "
            "signed)"
        )
    elif tamper == "nosig":
        _rewrite(baseline, {"manifest.sig": None})
        message = "signature missing: no manifest.sig; the baseline is unsigned"
    elif tamper == "manifest":
        edited = manifest.replace(b'"reader"', b'"readex"', 1)
        assert edited != manifest
        _rewrite(baseline, {"manifest.json": edited})
        message = (
            "signature does not match: the manifest was changed after it was signed "
            f"(by key {fingerprint})"
        )
    else:  # the second half, with the zip's central directory, is gone
        baseline.write_bytes(baseline.read_bytes()[: baseline.stat().st_size // 2])
        message = "truncated or not a patchguard baseline (File is not a zip file)"
    out = cli(env, "check")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"patchguard: {baseline}:"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr == f"patchguard: {baseline}: {message}\n"


def test_baseline_of_another_boot_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    from dataclasses import replace

    from patchguard.integrity.check import capture
    from patchguard.integrity.store import save_baseline
    from patchguard.kernel import Kernel
    from patchguard.signing import HostKey

    kernel = Kernel()
    try:
        taken = capture(kernel).baseline
    finally:
        kernel.close()
    other = replace(taken, meta=replace(taken.meta, boot_id="00000000-dead-beef-0000-000000000000"))
    key = HostKey.load_or_create(Path(env["PATCHGUARD_KEY"]))
    save_baseline(other, Path(env["PATCHGUARD_BASELINE"]), key)
    out = cli(env, "check")
    assert out.returncode == 2 and "another boot" in out.stderr, out.stderr


def test_missing_baseline_is_one_clear_line(env: dict[str, str]) -> None:
    key_only = cli(env, "baseline", "create", "--out", str(Path(env["PATCHGUARD_BASELINE"])))
    assert key_only.returncode == 0
    Path(env["PATCHGUARD_BASELINE"]).unlink()
    out = cli(env, "check")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
