"""Run INSIDE the lab guest by bench/check_modules.py: check and the guard's sweep with none of
the bench's modules loaded, then with all of them loaded (<results>/modules/*.ko), round after
round (loaded and unloaded again each round), each side against a baseline taken in its state,
so that nothing changed in either. Writes <results>/check_modules.json.
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
from dataclasses import dataclass
from functools import partial
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
    """CPU ms of this process (every thread) while `fn` runs. Under a loaded host neither this
    nor wall time is steady in the guest (both moved 2-6 x between rounds here): the floor
    timed beside it in each round is what puts a round's times at one guest speed, and the
    profile printed at the end counts what check does per module."""
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e3


def top_of(fn: Callable[[], object], lines: int = 25) -> str:
    """Where one run's time goes: cProfile's top functions by their own time."""
    profile = cProfile.Profile()
    profile.runcall(fn)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


@dataclass
class State:
    """One side of the comparison: its baseline and the guard's sweeps against it."""

    path: Path
    public: bytes
    spans: list[tuple[int, int]]
    keyed: KeyedPages | None


def baseline(kernel: Kernel, tmp: Path, key: HostKey) -> State:
    kernel.refresh()  # modules came or went: kallsyms and the module list anew
    path = tmp / "baseline.zip"
    save_baseline(capture(kernel).baseline, path, key)
    public = key.public_key_bytes()
    spans = [(e.start, e.size) for e in read_manifest(path, public).regions.values()]
    return State(path, public, spans, KeyedPages.open(kernel))


def measure(kernel: Kernel, state: State) -> dict[str, float]:
    """floor, check and a sweep (after one that is not timed: the chain's first, or the
    first since the other side's) once each."""
    times = {
        "floor": timed(lambda: floor(kernel, state.spans)),
        "check": timed(lambda: verify(kernel, state.path, state.public)),
    }
    if state.keyed is not None:
        verify(kernel, state.path, state.public, state.keyed)
        times["sweep"] = timed(lambda: verify(kernel, state.path, state.public, state.keyed))
    return times


def modules(command: str) -> None:
    for ko in sorted((RESULTS / "modules").glob("*.ko")):
        target = str(ko) if command == "insmod" else ko.stem
        subprocess.run([command, target], check=True, capture_output=True)


def rounds(kernel: Kernel, tmp: Path) -> dict[str, object]:
    """Each round: without the modules (against the first baseline), then with them (against
    a baseline taken right after loading them), then unloaded again. The two sides of a round
    are seconds apart, so the host's load (other guests share its CPUs) falls on both alike."""
    key = HostKey.load_or_create(tmp / "host.key")
    without = baseline(kernel, tmp / "without", key)
    sides: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    out: dict[str, object] = {"sides": sides}
    for i in range(ROUNDS):
        kernel.refresh()
        sides["without"].append(measure(kernel, without))
        modules("insmod")
        loaded = baseline(kernel, tmp / "with", key)
        sides["with"].append(measure(kernel, loaded))
        if i == ROUNDS - 1:
            out["regions"] = [len(without.spans), len(loaded.spans)]
            out["check_profile"] = top_of(partial(verify, kernel, loaded.path, loaded.public))
            if loaded.keyed is not None:
                sweep = partial(verify, kernel, loaded.path, loaded.public, loaded.keyed)
                out["sweep_profile"] = top_of(sweep)
            out["bytes"] = [sum(s for _, s in st.spans) for st in (without, loaded)]
            out["loaded"] = len(Path("/proc/modules").read_text().splitlines())
        if loaded.keyed is not None:
            loaded.keyed.close()
        modules("rmmod")
    return out


def main() -> None:
    kernel = Kernel()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "without").mkdir()
        (tmp / "with").mkdir()
        result = rounds(kernel, tmp)
    kernel.close()
    result["base"] = len(Path("/proc/modules").read_text().splitlines())
    result["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (RESULTS / "check_modules.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
