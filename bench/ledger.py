"""The exception ledger as a transparency log: speed at 100,000 entries, in one run.

append rate    = real `ledger.append`s (a request by a vendor, its approval by a reviewer)
                 on a log of 1,000, 10,000 and N entries: entries/s at each size, and the
                 ratio last/first (near 1: an append costs the same however long the ledger);
                 the first append after entries were inserted behind the log's back is timed
                 apart (it hashes them into the stored tree: what an older log pays once)
tree append    = leaf bytes, leaf hash and MemoryTree.append for every entry (entries/s)
checkpoint     = a full rebuild of the tree and a signed checkpoint (what an append cost
                 before the tree was stored; `publish` and `verify` still rebuild)
append         = one real `ledger.append` at N entries
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
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from timing import median_ms, median_seconds

from patchguard.policy import ledger
from patchguard.policy.chain import seal
from patchguard.policy.exceptions import (
    decide,
    grant_key,
    init_ledger,
    request_exception,
    set_max_expiry,
)
from patchguard.policy.manifest import Manifest, parse_manifest
from patchguard.policy.transparency import client, merkle, publish, store
from patchguard.policy.transparency.checkpoint import Checkpoint, sign_checkpoint
from patchguard.signing import HostKey

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def build(path: Path, owner: HostKey, count: int) -> None:
    """`count` signed entries, 2.. inserted in one transaction (appending each costs more)."""
    init_ledger(path, owner, "Host Owner", now=T0)
    grow(path, owner, count)


def grow(path: Path, owner: HostKey, count: int) -> None:
    """Signed max-expiry entries inserted after the last one, up to `count` entries."""
    head = ledger.load(path).entries[-1]
    previous, start = head.hash, head.seq + 1
    with ledger.locked(path) as (conn, _):
        for seq in range(start, count + 1):
            payload = {"policy": "max_expiry_days", "days": 300 + seq % 300}
            when = T0 + timedelta(seconds=seq)
            entry = seal(seq, when, "policy", owner, None, payload, previous)
            ledger._insert(conn, entry)
            previous = entry.hash


MANIFEST = Path(__file__).resolve().parents[1] / "src/patchguard/policy/manifests/lkrg.toml"


def request_and_approve(path: Path, vendor: HostKey, reviewer: HostKey, at: datetime) -> None:
    manifest: Manifest = parse_manifest(MANIFEST.read_bytes(), str(MANIFEST))
    asked = request_exception(path, vendor, manifest, at.date() + timedelta(days=30), now=at)
    decide(path, reviewer, asked.entry.seq, True, "reviewed", now=at)


def rates_log(work: Path, size: int, keys: list[HostKey]) -> tuple[Path, float]:
    """A log of `size` entries that grants the vendor and reviewer keys: the path, and the
    seconds of its first append (which takes the inserted entries into the stored tree)."""
    owner, vendor, reviewer = keys
    path = work / f"rates-{size}.db"
    init_ledger(path, owner, "Host Owner", now=T0)
    grant_key(path, owner, vendor.public_key_bytes(), "Vendor", [], now=T0)
    grant_key(path, owner, reviewer.public_key_bytes(), "Review Board", ["approve"], now=T0)
    publish.init_log(path, "bench.example/rates", work / "rates-log.key")
    grow(path, owner, size - 1)
    t0 = time.perf_counter()
    set_max_expiry(path, owner, 365, now=T0 + timedelta(days=1000))
    return path, time.perf_counter() - t0


def append_rates(work: Path, sizes: list[int], rounds: int) -> None:
    """Appends/s on logs of each size (see the module's docstring). The rounds go from one
    log to the next in turn, so a change in the machine's load (a commit waits for the disk)
    falls on every size alike; the median round is taken."""
    keys = [HostKey.load_or_create(work / f"{n}.key") for n in ("owner", "vendor", "reviewer")]
    logs = {size: rates_log(work, size, keys) for size in sizes}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    clock = T0 + timedelta(days=1000)
    for i in range(rounds):
        for size, (path, _) in logs.items():
            t0 = time.perf_counter()
            request_and_approve(path, keys[1], keys[2], clock + timedelta(minutes=i))
            times[size].append(time.perf_counter() - t0)
    rates = {size: 2 / statistics.median(times[size]) for size in sizes}
    for size in sizes:
        print(
            f"append rate at {size:,} entries: {rates[size]:,.0f} entries/s "
            f"(the first append after {size:,} inserted: {logs[size][1]:.2f} s)"
        )
    ratio = rates[sizes[-1]] / rates[sizes[0]]
    print(f"append rate ratio {sizes[-1]:,} / {sizes[0]:,} entries: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appends", type=int, default=50, help="request+approve pairs")
    args = parser.parse_args()
    n, rounds = args.entries, args.rounds
    work = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    append_rates(work, [s for s in (1_000, 10_000) if s < n] + [n], args.appends)
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
    print(f"append at {n:,}: {(time.perf_counter() - t0) * 1000:.1f} ms")

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
