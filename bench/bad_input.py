"""Costs that hostile input used to make quadratic or repeated, as ratios measured in one run.

manifest: validating a manifest of N helpers (tomllib parse included) at N = 5,000 and
20,000; linear is a ratio of ~4 (the old duplicate check, list.count per item, was ~16).
toml nesting: the linear pre-check on the 20,000-helper manifest, against tomllib parsing it.
ledger: `load` of a ledger of N policy entries, the first time (replay: one signature check per
entry) and again with its head unchanged (one primary-key lookup); target: the repeat costs
the same at 1,000 and 10,000 entries (ratio ~1), and a tiny fraction of a replay.
Run: .venv/bin/python bench/bad_input.py [--rounds N]
"""

from __future__ import annotations

import argparse
import tempfile
import tomllib
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from timing import median_ms

from patchguard.policy import ledger
from patchguard.policy.chain import GENESIS_HASH, seal
from patchguard.policy.exceptions import init_ledger
from patchguard.policy.manifest import parse_manifest
from patchguard.safe_read import toml_nesting
from patchguard.signing import HostKey

HEAD = """\
vendor = "Acme"
product = "sensor"
version = "1"
contact = "sec@acme.example"
justification = "telemetry"

[[bpf_program]]
name = "p"
prog_type = "tracepoint"
attach = "tracepoint:sys_enter_kill"
loader = { path = "/opt/acme/bin/sensor", sha256 = "%s" }
""" % ("cd" * 32)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def manifest_of(helpers: int) -> bytes:
    names = ", ".join(f'"helper_{i}"' for i in range(helpers))
    return (HEAD + f"helpers = [{names}]\n").encode()


def ledger_of(path: Path, entries: int, key: HostKey) -> None:
    """`entries` signed policy entries, inserted in one transaction (appending them one by one
    replays the ledger each time)."""
    init_ledger(path, key, "Owner", now=T0)
    last = ledger.load(path).entries[-1]
    conn = ledger._connect(path, create=False)
    conn.execute("BEGIN IMMEDIATE")
    prev = last.hash
    for seq in range(2, entries + 1):
        payload = {"policy": "max_expiry_days", "days": 30 + seq % 60}
        entry = seal(seq, T0 + timedelta(seconds=seq), "policy", key, None, payload, prev)
        ledger._insert(conn, entry)
        prev = entry.hash
    conn.execute("COMMIT")
    conn.close()
    assert prev != GENESIS_HASH


def replay_and_repeat(path: Path, rounds: int) -> tuple[float, float]:
    def fresh() -> object:
        ledger._REPLAYS.clear()
        return ledger.load(path)

    first = median_ms(fresh, rounds)
    ledger.load(path)
    return first, median_ms(lambda: ledger.load(path), rounds * 10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    small, big = (median_ms(partial(parse_manifest, manifest_of(n), "m"), rounds)
                  for n in (5_000, 20_000))  # fmt: skip
    print(f"manifest 5,000 helpers {small:.1f} ms, 20,000 {big:.1f} ms: "
          f"ratio {big / small:.2f} (linear ~4, quadratic ~16)")  # fmt: skip
    text = manifest_of(20_000).decode()
    scan = median_ms(partial(toml_nesting, text), rounds)
    parse = median_ms(partial(tomllib.loads, text), rounds)
    print(
        f"toml nesting pre-check on the {len(text) >> 10} KiB manifest: {scan:.1f} ms, "
        f"tomllib {parse:.1f} ms (ratio {scan / parse:.2f})"
    )
    key = HostKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        costs = {}
        for n in (1_000, 10_000):
            path = Path(tmp) / f"ledger-{n}.db"
            ledger_of(path, n, key)
            costs[n] = replay_and_repeat(path, rounds)
            first, again = costs[n]
            print(f"ledger {n:,} entries: replay {first:.1f} ms, head unchanged {again:.3f} ms "
                  f"(ratio {again / first:.5f})")  # fmt: skip
        ratio = costs[10_000][1] / costs[1_000][1]
        print(f"head unchanged, 10,000 / 1,000 entries: ratio {ratio:.2f} (target ~1)")


if __name__ == "__main__":
    main()
