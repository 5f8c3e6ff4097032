"""The exception ledger as a transparency log: speed at 100,000 entries, in one run.

tree append    = leaf bytes, leaf hash and MemoryTree.append for every entry (entries/s)
checkpoint     = what each append adds for the log: rebuild the tree, sign a checkpoint
append         = one real `ledger.append` at that size (it replays and re-verifies the whole
                 ledger before it writes, as it always has; the checkpoint is a small part)
publish        = load the log (replay, tree, checkpoint check) and write every tile
full verify    = from the published directory: every entry bundle and tile read, root
                 recomputed, tiles compared (target <= 2 s); then with every entry replayed
consistency    = `verify --url` of the next checkpoint from the remembered one (target <= 50 ms)
inclusion      = verify_inclusion of one proof (microseconds each)

Run: .venv/bin/python bench/ledger.py [--entries N] [--rounds N]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from timing import median_ms, median_seconds

from patchguard.policy import ledger
from patchguard.policy.chain import seal
from patchguard.policy.exceptions import init_ledger, set_max_expiry
from patchguard.policy.transparency import client, merkle, publish, store
from patchguard.policy.transparency.checkpoint import Checkpoint, sign_checkpoint
from patchguard.signing import HostKey

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def build(path: Path, owner: HostKey, count: int) -> None:
    """`count` signed entries, 2.. inserted in one transaction (append replays each time)."""
    init_ledger(path, owner, "Host Owner", now=T0)
    previous = ledger.load(path).entries[0].hash
    with ledger.locked(path) as (conn, _):
        for seq in range(2, count + 1):
            payload = {"policy": "max_expiry_days", "days": 1 + seq % 300}
            entry = seal(seq, T0 + timedelta(seconds=seq), "policy", owner, None, payload, previous)
            ledger._insert(conn, entry)
            previous = entry.hash


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = args.entries, args.rounds
    work = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    owner = HostKey.load_or_create(work / "owner.key")
    path = work / "ledger.db"
    t0 = time.perf_counter()
    build(path, owner, n - 1)
    print(f"setup: {n - 1} signed entries in {time.perf_counter() - t0:.1f} s")
    publish.init_log(path, "bench.example/ledger", work / "log.key")
    before = work / "before"
    publish.publish(publish.load_log(path), before)

    entries = ledger.load(path).entries
    seconds = median_seconds(lambda: store.tree_of(entries), rounds)
    print(f"tree append: {len(entries) / seconds:,.0f} entries/s ({seconds * 1000:.0f} ms for all)")
    config = publish.load_log(path).config
    signer = config.signer()

    def checkpoint() -> None:
        sign_checkpoint(Checkpoint(config.origin, n, store.tree_of(entries).root()), signer)

    print(f"checkpoint per append: {median_ms(checkpoint, rounds):.0f} ms")
    t0 = time.perf_counter()
    set_max_expiry(path, owner, 42, now=T0 + timedelta(days=30))
    print(f"append at {n:,}: {time.perf_counter() - t0:.2f} s (replays the whole ledger)")

    site = work / "site"
    t0 = time.perf_counter()
    view = publish.load_log(path)
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = publish.publish(view, site)
    wrote = time.perf_counter() - t0
    print(f"publish: load {loaded:.2f} s, write {wrote:.2f} s ({done.written} files)")

    def full(replay: bool) -> None:
        client.verify(str(site), view.config.verifier.vkey, work / "s-full", replay=replay)

    print(f"full verify from tiles: {median_seconds(lambda: full(False), rounds):.2f} s")
    print(f"full verify, every entry replayed too: {median_seconds(lambda: full(True), 1):.2f} s")

    vkey = view.config.verifier.vkey

    def consistency(state: Path) -> float:
        client.verify(str(before), vkey, state, full=False)  # remembers size n - 1
        t0 = time.perf_counter()
        client.verify(str(site), None, state, full=False)
        return time.perf_counter() - t0

    times = sorted(consistency(work / f"s-cons-{i}") for i in range(max(rounds, 5)))
    median = times[len(times) // 2] * 1000
    print(f"consistency check from size {n - 1:,} to {n:,}: {median:.1f} ms")

    tree, size, root = view.tree, view.size, view.latest.checkpoint.root
    picks = [random.randrange(size) for _ in range(1000)]
    proofs = [(tree.complete(0, i), i, tree.inclusion_proof(i)) for i in picks]

    def inclusion() -> None:
        for leaf, i, proof in proofs:
            merkle.verify_inclusion(leaf, i, size, proof, root)

    print(f"inclusion verify: {median_ms(inclusion, rounds) * 1000 / len(proofs):.1f} µs each")


if __name__ == "__main__":
    main()
