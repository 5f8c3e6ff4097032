"""What naming lapsed exceptions (exception-lapsed) costs a scan's policy, as ratios, in one run.

read     = `exceptions_at` (the live and the lapsed exceptions) against `live_exceptions` alone,
           on a ledger of N approved exceptions of which all but the last have lapsed (some
           revoked), its replay cached as a scan's is
apply    = the ebpf policy over P loaded programs, each exactly as one lapsed exception declared
           it (the worst case: every program is matched and named), with the lapsed exceptions
           against without them (what a scan paid before), and against the same programs each
           allowed by the same exceptions while they were live (exception-match: the same
           match, one finding each)

Run: .venv/bin/python bench/exception_lapsed.py [--exceptions N] [--programs P] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from timing import median_seconds

from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import parse_manifest
from patchguard.policy.match import apply_exceptions
from patchguard.signing import HostKey
from patchguard.surfaces.ebpf import Attachment, BpfProgram, EbpfRecords

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
PROGRAMS_EACH = 4  # [[bpf_program]] entries per manifest


def manifest_text(n: int) -> str:
    head = (
        f'vendor = "Vendor {n % 20}"\nproduct = "agent {n}"\nversion = "1.0"\n'
        'contact = "sre@example.invalid"\njustification = "bench"\n'
    )
    body = "".join(
        f'\n[[bpf_program]]\nname = "p{n}_{i}"\nprog_type = "tracing"\nattach = ["task"]\n'
        f'helpers = []\npins = ["/sys/fs/bpf/bench_{n}_{i}"]\n'
        for i in range(PROGRAMS_EACH)
    )
    return head + body


def program(n: int, i: int) -> BpfProgram:
    """The program manifest `n` declares as its `i`th, kept by its pin alone."""
    pin = f"/sys/fs/bpf/bench_{n}_{i}"
    attached = (Attachment("link", "task"),)
    return BpfProgram(n * 10 + i, "tracing", f"p{n}_{i}", "00" * 8, "", 0, (), 0, None, (), (),
                      attached, (), (pin,))  # fmt: skip


def build(folder: Path, count: int) -> tuple[Path, datetime]:
    """A ledger of `count` approved exceptions, expiring one a day; every fifth is revoked.
    Returns it and a time at which all but the last have lapsed."""
    keys = {n: HostKey.load_or_create(folder / f"{n}.key") for n in ("o", "v", "r")}
    path = folder / "ledger.db"
    ops.init_ledger(path, keys["o"], "Host Owner", now=T0)
    ops.set_max_expiry(path, keys["o"], 3650, now=T0)
    ops.grant_key(path, keys["o"], keys["v"].public_key_bytes(), "Vendors", [], now=T0)
    ops.grant_key(path, keys["o"], keys["r"].public_key_bytes(), "Review", ["approve"], now=T0)
    seqs = []
    for n in range(count):
        manifest = parse_manifest(manifest_text(n).encode(), f"m{n}.toml")
        until = date(2026, 1, 11) + timedelta(days=n + 1)
        seqs.append(ops.request_exception(path, keys["v"], manifest, until, now=T0).entry.seq)
        ops.decide(path, keys["r"], seqs[-1], True, "ok", now=T0)
    for seq in seqs[4:-1:5]:
        ops.revoke(path, keys["r"], seq, "withdrawn", now=T0 + timedelta(hours=1))
    return path, datetime.combine(date(2026, 1, 11) + timedelta(days=count - 1), time(0), UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exceptions", type=int, default=300)
    parser.add_argument("--programs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    path, now = build(Path(tempfile.mkdtemp(prefix="bench-lapsed-")), args.exceptions)
    live, lapsed = ops.exceptions_at(path, now)
    assert len(live) == 1 and len(lapsed) == args.exceptions - 1
    read_both = median_seconds(lambda: ops.exceptions_at(path, now), args.rounds)
    read_live = median_seconds(lambda: ops.live_exceptions(path, now), args.rounds)
    count = min(args.programs, len(lapsed) * PROGRAMS_EACH)
    progs = [program(n, i) for n in range(len(lapsed)) for i in range(PROGRAMS_EACH)][:count]
    records = EbpfRecords.of(progs)
    found = apply_exceptions([], records, live, "h", lapsed)
    assert len(found) == count, len(found)  # every program named as lapsed
    with_lapsed = median_seconds(
        lambda: apply_exceptions([], records, live, "h", lapsed), args.rounds
    )
    without = median_seconds(lambda: apply_exceptions([], records, live, "h"), args.rounds)
    early, _ = ops.exceptions_at(path, T0 + timedelta(days=1))  # all of them live
    allowed = median_seconds(lambda: apply_exceptions([], records, early, "h"), args.rounds)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"read: exceptions_at {read_both * 1000:.2f} ms vs live_exceptions "
          f"{read_live * 1000:.2f} ms = {read_both / read_live:.2f}x "
          f"({args.exceptions} exceptions)")  # fmt: skip
    print(f"apply: {count} programs, {len(lapsed)} lapsed: {with_lapsed * 1000:.2f} ms vs "
          f"{without * 1000:.2f} ms without = {with_lapsed / without:.2f}x; all allowed while "
          f"live {allowed * 1000:.2f} ms: lapsed/live = {with_lapsed / allowed:.2f}x")  # fmt: skip
    print(f"load average {load}")


if __name__ == "__main__":
    main()
