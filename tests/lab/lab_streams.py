"""The lab suite as two streams of guests, each a pytest process of its own (scripts/test):
the first starts with the host suite, the second once the host suite is done, when one guest
at a time would leave a core idle. Each lab test's stream is fixed ahead of time by the guest
time its unit took, longest first, the first stream given the larger share so that both end
together. PATCHGUARD_LAB_STREAM=first|second selects one (tests/lab/conftest.py); unset, a
run holds every lab test, as before."""

from __future__ import annotations

import os

STREAMS = ("first", "second")
# Seconds in the guest per unit, from the CI run of 2026-12-07 (lab/run's boot to poweroff;
# load about 2). A unit is a test file, whose tests share its module fixture's boot, or, where
# each test boots a guest of its own, one test (file::name). Files without an entry count as
# DEFAULT_SECONDS.
UNIT_SECONDS = {
    "test_lab_corpus.py::test_corpus_members_in_the_lab_guest": 390,
    "test_lab_live.py::test_live_suite_passes_on_the_newer_kernel": 308,
    "test_lab_live.py::test_live_suite_passes_in_the_lab_guest": 272,
    "test_lab_guard_wake.py": 141,
    "test_lab_lkrg.py": 95,
    "test_lab_code_patching.py": 62,
    "test_lab_restrict_filesystems.py": 59,
    "test_lab_corpus.py::test_fentry_member_in_the_lab_guest[newer]": 58,
    "test_lab_direct_call_newer.py": 57,  # with the hidden module at its end
    "truth_guest.py": 55,
    "test_lab_corpus.py::test_fentry_member_in_the_lab_guest[stock]": 51,
    "test_lab_function_hooks.py": 50,
    "test_lab_hiding_and_entry.py": 50,  # 32 s, and the bugcheck boot that panics (no timing)
    "test_lab_direct_call.py": 43,
    "test_lab_first_scan.py": 40,
    "test_lab_check_structs.py": 40,
    "test_lab_ftrace_ops.py": 32,
    "test_lab_hidden_task.py": 32,
    "test_lab_sockets.py": 26,
    "test_lab_tracepoint_probes.py": 24,
    "test_lab_boot.py": 12,
    "test_lab_streams.py": 0,  # no boot
}
DEFAULT_SECONDS = 60
# Files whose tests share one boot across files (truth_guest.results, once a session): one unit.
SHARED_BOOT = {
    "test_lab_khook.py": "truth_guest.py",
    "test_lab_taint_cleared.py": "truth_guest.py",
    "test_lab_kallsyms_filtered.py": "truth_guest.py",
}
# The host suite's wall time in CI (8 min 9 s on 2026-12-07): the first stream runs alone
# beside it, so it takes that much more guest time than the second.
HOST_SECONDS = 490


def unit_of(nodeid: str) -> str:
    file = nodeid.split("::")[0].rsplit("/", 1)[-1]
    test = f"{file}::{nodeid.split('::')[-1]}"
    return test if test in UNIT_SECONDS else SHARED_BOOT.get(file, file)


def seconds(unit: str) -> int:
    return UNIT_SECONDS.get(unit, DEFAULT_SECONDS)


def streams(units: list[str]) -> dict[str, str]:
    """Longest unit first, each to the stream that would end first with it: the second
    starts HOST_SECONDS later."""
    ends = {"first": 0, "second": HOST_SECONDS}
    stream_of = {}
    for unit in sorted(set(units), key=lambda u: (-seconds(u), u)):
        stream_of[unit] = min(STREAMS, key=lambda s: (ends[s] + seconds(unit), s))
        ends[stream_of[unit]] += seconds(unit)
    return stream_of


def selected() -> str | None:
    """The stream this process runs (PATCHGUARD_LAB_STREAM), or None for every lab test."""
    stream = os.environ.get("PATCHGUARD_LAB_STREAM") or None
    if stream is not None and stream not in STREAMS:
        raise ValueError(f"PATCHGUARD_LAB_STREAM={stream!r}: not one of {', '.join(STREAMS)}")
    return stream
