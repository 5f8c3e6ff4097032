"""The host's witness gate and the operator's witness round, in one run.

collect        = `ledger witness-collect` with 2 witnesses (`witness serve` on 127.0.0.1): a
                 request and a cosignature per witness (ms per round)
gate           = one full gate pass (checkpoint read and verified, cosignatures counted, the
                 host's ledger checked against its root) at N entries: cold, every leaf hashed
                 (a new process); warm, the tree kept from the last pass
ungated        = `ledger_policy`, what the same host pays without the gate (its ledger
                 replay cached by head): the warm gate's cost is given as a ratio to it
cached gate    = the guard's call at a trigger look when the ledger did not change (us)

Run: .venv/bin/python bench/gate.py [--entries N] [--rounds N]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from ledger import build
from timing import median_ms, median_seconds

from patchguard.policy.match import ledger_policy
from patchguard.policy.transparency import collect, note, publish
from patchguard.policy.transparency import gate as gate_module
from patchguard.policy.transparency.gate import cached_gate, gate
from patchguard.policy.transparency.gate_config import GateSettings
from patchguard.policy.transparency.serve import serve
from patchguard.policy.transparency.witness import Witness
from patchguard.signing import HostKey


def witnesses(work: Path, log: note.Verifier) -> list[Witness]:
    out = []
    for name in ("w1", "w2"):
        signer = note.Signer(f"bench.example/{name}", note.COSIGNATURE, HostKey.generate())
        out.append(Witness(signer, ((log.name, log),), work / name))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    path = work / "ledger.db"
    build(path, HostKey.load_or_create(work / "owner.key"), args.entries)
    publish.init_log(path, "bench.example/ledger", work / "log.key")
    view = publish.load_log(path)
    site = work / "site"
    publish.publish(view, site)
    ws = witnesses(work, view.config.verifier)
    servers = [serve(w, "127.0.0.1", 0) for w in ws]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    try:
        ms = median_ms(lambda: collect.collect(view, site, urls), args.rounds)
        print(f"collect: {ms:.1f} ms per round of 2 witnesses")
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    keys = tuple(w.signer.verifier for w in ws)
    settings = GateSettings(view.config.verifier, keys, 2, str(site), work / "host")
    assert gate(path, settings).witnessed == args.entries

    def cold() -> None:
        gate_module._TREES.clear()  # every leaf hashed again, as in a new process
        gate(path, settings)

    first = median_seconds(cold, args.rounds)
    once = median_seconds(lambda: gate(path, settings), args.rounds)
    plain = median_seconds(lambda: ledger_policy(path), args.rounds)
    print(f"gate at {args.entries:,} entries: {first * 1000:.0f} ms cold (the tree built), "
          f"{once * 1000:.1f} ms warm, {once / plain:.0f}x the ungated ledger_policy "
          f"({plain * 1000:.2f} ms)")  # fmt: skip
    cached_gate(path, settings)
    t0, calls = time.perf_counter(), 1000
    for _ in range(calls):
        cached_gate(path, settings)
    print(f"cached gate: {(time.perf_counter() - t0) / calls * 1e6:.0f} us per call")


if __name__ == "__main__":
    main()
