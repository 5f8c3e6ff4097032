"""Run INSIDE the lab guest by bench/check_modules.py: check and the guard's sweep with none of
the bench's modules loaded, then with all of them loaded (<results>/modules/*.ko), each phase
with its own baseline taken in that state, so that nothing changed in either. Writes
<results>/check_modules.json.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, "/src/src")
sys.path.insert(0, "/src/bench")

from lkrg_guest import floor

from patchguard.integrity.check import capture, verify
from patchguard.integrity.keyed_pages import KeyedPages
from patchguard.integrity.store import read_manifest, save_baseline
from patchguard.kernel import Kernel
from patchguard.signing import HostKey

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else "/results")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 7


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def rounds(variants: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """ROUNDS rounds, each timing every variant once: the host's load (other guests share its
    CPUs) then falls on each alike, and the floor measures the guest's speed in each round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return times


def top_of(fn: Callable[[], object], lines: int = 25) -> str:
    """Where one run's time goes: cProfile's top functions by their own time."""
    profile = cProfile.Profile()
    profile.runcall(fn)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def phase(tmp: Path) -> dict[str, object]:
    """Baseline now, then the floor, check and the sweep (after its first) against it."""
    kernel = Kernel()
    key = HostKey.load_or_create(tmp / "host.key")
    path = tmp / "baseline.zip"
    save_baseline(capture(kernel).baseline, path, key)
    public = key.public_key_bytes()
    spans = [(e.start, e.size) for e in read_manifest(path, public).regions.values()]
    out: dict[str, object] = {"bytes": sum(s for _, s in spans), "regions": len(spans)}
    out["modules"] = len(Path("/proc/modules").read_text().splitlines())
    out["check_findings"] = len(verify(kernel, path, public).findings)
    variants: dict[str, Callable[[], object]] = {
        "floor": lambda: floor(kernel, spans),
        "check": lambda: verify(kernel, path, public),
    }
    keyed = KeyedPages.open(kernel)
    if keyed is not None:
        verify(kernel, path, public, keyed)  # the first sweep SHA-256s every page
        variants["sweep"] = lambda: verify(kernel, path, public, keyed)
    out["times_ms"] = rounds(variants)
    out["check_profile"] = top_of(lambda: verify(kernel, path, public))
    if keyed is not None:
        keyed.close()
    kernel.close()
    return out


def load_all() -> None:
    for ko in sorted((RESULTS / "modules").glob("*.ko")):
        subprocess.run(["insmod", str(ko)], check=True, capture_output=True)


def main() -> None:
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        result["without"] = phase(Path(tmp))
    load_all()
    with tempfile.TemporaryDirectory() as tmp:
        result["with"] = phase(Path(tmp))
    result["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (RESULTS / "check_modules.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
