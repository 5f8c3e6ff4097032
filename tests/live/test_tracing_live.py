"""The tracing surface on the running kernel.

Each test first finds out, with plain open(2), what the kernel really gives, and asserts the
surface says the same: on the 6.18 "fc" machine enabled_functions is refused (EPERM) and there
are no kprobes, so the state holds gaps naming that; on a kernel where the files are readable
(the Debian 6.1 lab) it holds their records. Each test records which case ran
(`-rA` or the junit user properties show it).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from patchguard.findings import Finding
from patchguard.kernel import Kernel
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.tracing import (
    NO_KPROBES,
    TracingRecords,
    TracingSurface,
    parse_dynamic_events,
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="tracefs and debugfs need root"),
]

TRACEFS = Path("/sys/kernel/tracing")
KPROBE_LIST = Path("/sys/kernel/debug/kprobes/list")

State = SurfaceState[TracingRecords]


@pytest.fixture(scope="module")
def scanned() -> tuple[State, list[Finding]]:
    surface = TracingSurface()
    state = surface.collect(Kernel())  # mounts tracefs/debugfs read-only if they are missing
    return state, surface.assess(state)


def read(path: Path) -> str | int:
    """The file's text, or the errno the kernel answered with."""
    try:
        return path.read_text()
    except OSError as exc:
        assert exc.errno is not None
        return exc.errno


def case(request: pytest.FixtureRequest, text: str) -> None:
    request.node.user_properties.append(("case", text))
    print(f"case: {text}")


def gap_reasons(state: State) -> dict[str, str]:
    return {g.what: g.reason for g in state.gaps}


def test_enabled_functions(
    scanned: tuple[State, list[Finding]], request: pytest.FixtureRequest
) -> None:
    state, _ = scanned
    truth = read(TRACEFS / "enabled_functions")
    hooks = list(state.records.ftrace_hooks)
    if isinstance(truth, int):
        case(request, f"enabled_functions refused: {errno.errorcode[truth]}")
        reason = gap_reasons(state)["ftrace enabled_functions"]
        assert f"({errno.errorcode[truth]})" in reason
        assert hooks == [] and state.counts["ftrace_functions"] == 0
        return
    case(request, "enabled_functions readable: records asserted")
    lines = [line for line in truth.splitlines() if not line.startswith("\t")]
    # Hooks come and go between two reads; the count must still be close.
    assert abs(len(hooks) - len(lines)) <= 5
    assert "ftrace enabled_functions" not in gap_reasons(state)


def test_kprobes(scanned: tuple[State, list[Finding]], request: pytest.FixtureRequest) -> None:
    state, _ = scanned
    probes = list(state.records.kprobes)
    if not KPROBE_LIST.exists():
        case(request, "no kprobes/list: kprobes not built")
        assert gap_reasons(state)["kprobes (debugfs kprobes/list)"].startswith(NO_KPROBES)
        assert probes == [] and state.counts["kprobes"] == 0
        return
    truth = read(KPROBE_LIST)
    if isinstance(truth, int):
        case(request, f"kprobes/list refused: {errno.errorcode[truth]}")
        assert errno.errorcode[truth] in gap_reasons(state)["kprobes (debugfs kprobes/list)"]
        return
    case(request, "kprobes/list readable: records asserted")
    assert abs(len(probes) - len(truth.splitlines())) <= 5


def test_dynamic_events(
    scanned: tuple[State, list[Finding]], request: pytest.FixtureRequest
) -> None:
    state, findings = scanned
    truth = read(TRACEFS / "dynamic_events")
    events = list(state.records.events)
    if isinstance(truth, int):
        case(request, f"dynamic_events unreadable: {errno.errorcode[truth]}")
        assert errno.errorcode[truth] in gap_reasons(state)["dynamic trace events (dynamic_events)"]
        return
    expected = {(e.group, e.event) for e in parse_dynamic_events(truth)}
    case(request, f"dynamic_events readable: {len(expected)} events")
    assert {(e.group, e.event) for e in events} >= expected
    assert len([f for f in findings if f.subject in {f"{g}/{e}" for g, e in expected}]) >= len(
        expected
    )


def test_kprobe_events_file_matches_the_kernel(scanned: tuple[State, list[Finding]]) -> None:
    state, _ = scanned
    reason = gap_reasons(state).get("dynamic trace events (kprobe_events)")
    if (TRACEFS / "kprobe_events").exists():
        assert reason is None
    else:
        assert reason is not None and "does not build these events" in reason


def test_no_findings_without_hooks(scanned: tuple[State, list[Finding]]) -> None:
    state, findings = scanned
    if any(state.counts[k] for k in ("ftrace_functions", "kprobes", "dynamic_events")):
        pytest.skip("this kernel has live hooks; their findings are asserted above")
    # tracepoint probes (these VMs carry BPF programs bpf(2) does not list) are asserted in
    # test_tracepoint_probes_live.py
    assert [f for f in findings if not f.technique.startswith("tracepoint-probe-")] == []
