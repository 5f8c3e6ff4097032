"""The shipped bpftool manifest, proven on the running kernel: Debian's bpftool pins the task-list
iterator that bpftool-list-tasks.bpf.c builds (compiled here with clang -target bpf), and exits;
no process holds the program, its link's pin keeps it. Under an approved exception for
bpftool-list-tasks.toml, `scan` reports it allowed and nothing of it above info; pinned anywhere
else, or at one more path, or held by a process, it is not covered and the finding says why.
Every pin is removed on the way out, pass or fail: that unloads the program."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.corpus import run, tool
from support.manifests import MANIFESTS, approved_ledger, scan_ebpf

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.objects import link_info
from patchguard.policy.manifest import load_manifest

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]
MANIFEST = MANIFESTS / "bpftool-list-tasks.toml"
SOURCE = MANIFESTS / "bpftool-list-tasks.bpf.c"
NAME = "list_tasks"
PIN = "/sys/fs/bpf/list_tasks"  # as the manifest declares it


@pytest.fixture(scope="module")
def bpf_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The iterator, compiled by the test (patchguard itself never compiles anything)."""
    out = tmp_path_factory.mktemp("bpftool") / "list_tasks.bpf.o"
    run(tool("clang"), "-O2", "-g", "-Wall", "-target", "bpf", "-c", str(SOURCE), "-o", str(out))
    return out


@pytest.fixture(scope="module")
def bpftool() -> str:
    """bpftool, of the upstream version the manifest is for (Debian rebuilds the same bpftool
    with every 6.1 point release; what it pins does not change with the rebuild)."""
    path = tool("bpftool")
    version = load_manifest(MANIFEST).version
    first = run(path, "version").splitlines()[0]  # "/usr/sbin/bpftool v7.1.0"
    assert first.split()[-1] == f"v{version.split('+')[0]}", f"{first}; manifest for {version}"
    return path


@contextlib.contextmanager
def pinned(bpftool: str, obj: Path, path: str, *more: str) -> Iterator[None]:
    """`bpftool iter pin obj path`, then the same link pinned again at each of `more` (`bpftool
    link pin`); on the way out every one of those pins is removed, which unloads it."""
    for where in (path, *more):
        if os.path.lexists(where):
            pytest.fail(f"{where} exists already: remove it (it is not this test's)")
    made: list[str] = []
    try:
        made.append(path)  # before bpftool runs: a pin it made before failing is removed too
        run(bpftool, "iter", "pin", str(obj), path)
        for extra in more:
            made.append(extra)
            run(bpftool, "link", "pin", "pinned", path, extra)
        yield
    finally:
        for where in reversed(made):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where)


def scan_approved(tmp_path: Path) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """Scan under the approved manifest: exit code, doc, and the findings about the program."""
    ledger = approved_ledger(tmp_path, MANIFEST, "bpftool packagers")
    rc, doc = scan_ebpf(ledger)
    records = [r for s in doc["surfaces"] for r in s["records"]]
    ours = [r for r in records if r.get("kind") == "BpfProgram" and r["name"] == NAME]
    assert len(ours) == 1, f"one {NAME} program is loaded: {ours}"
    prog_id = ours[0]["prog_id"]
    return rc, doc, [f for f in doc["findings"] if f["evidence"].get("prog_id") == prog_id]


def mismatch(mine: list[dict[str, Any]]) -> dict[str, Any]:
    found = [f for f in mine if f["technique"] == "exception-mismatch"]
    assert len(found) == 1, mine
    assert not [f for f in mine if f["disposition"] == "allowed"], mine
    assert found[0]["severity"] == "high"
    return found[0]


def test_bpftool_pinned_iterator_is_covered_by_its_shipped_manifest(
    bpftool: str, bpf_object: Path, tmp_path: Path
) -> None:
    with pinned(bpftool, bpf_object, PIN):
        listing = Path(PIN).read_text().splitlines()
        rc, doc, mine = scan_approved(tmp_path)
    assert listing[0] == "tgid pid comm"
    assert any(line.startswith(f"{os.getpid()} {os.getpid()} ") for line in listing), listing
    assert [f["technique"] for f in mine] == ["exception-match"], mine
    assert mine[0]["disposition"] == "allowed" and mine[0]["severity"] == "info"
    assert mine[0]["summary"].startswith("allowed by exception #")
    # Nothing about list_tasks acts; only other programs on this host may fail the scan.
    acting = [f for f in doc["findings"] if f["disposition"] != "allowed"]
    others = [f for f in acting if f["severity"] != "info"]
    assert rc == 0 or others, "allowed hooks do not fail the scan"


@pytest.mark.parametrize(
    ("pins", "seen"),
    [
        ((PIN + "_moved",), f"pinned at ['{PIN}_moved'], declared ['{PIN}']"),
        ((PIN, PIN + "_again"), f"pinned at ['{PIN}', '{PIN}_again'], declared ['{PIN}']"),
    ],
    ids=["pinned-elsewhere", "pinned-twice"],
)
def test_bpftool_iterator_pinned_otherwise_is_not_covered(
    bpftool: str, bpf_object: Path, tmp_path: Path, pins: tuple[str, ...], seen: str
) -> None:
    with pinned(bpftool, bpf_object, *pins):
        _rc, _doc, mine = scan_approved(tmp_path)
    found = mismatch(mine)
    assert found["evidence"]["differences"] == [seen]
    assert seen in found["summary"]


def test_bpftool_iterator_held_by_a_process_is_not_covered(
    bpftool: str, bpf_object: Path, tmp_path: Path
) -> None:
    with pinned(bpftool, bpf_object, PIN):
        link = bpf.obj_get(PIN)
        try:
            prog_id = link_info(link).prog_id
        finally:
            os.close(link)
        held = bpf.fd_by_id(bpf.BPF_PROG_GET_FD_BY_ID, prog_id, "PROG_GET_FD_BY_ID")
        try:
            _rc, _doc, mine = scan_approved(tmp_path)
        finally:
            os.close(held)
    (difference,) = mismatch(mine)["evidence"]["differences"]
    assert difference.endswith(f"(pid {os.getpid()}), but no loader is declared"), difference
