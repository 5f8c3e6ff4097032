"""Run INSIDE the lab guest by bench/check_modules.py: check and the guard's sweep with none of
the bench's modules loaded, then with all of them loaded (<results>/modules/*.ko), each phase
with its own baseline taken in that state, so that nothing changed in either. Writes
<results>/check_modules.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "/src/src")
sys.path.insert(0, "/src/bench")

from lkrg_guest import floor, median_ms

from patchguard.integrity.check import capture, verify
from patchguard.integrity.keyed_pages import KeyedPages
from patchguard.integrity.store import read_manifest, save_baseline
from patchguard.kernel import Kernel
from patchguard.signing import HostKey

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else "/results")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def phase(tmp: Path) -> dict[str, float | int]:
    """Baseline now, then the floor, check and the sweep (after its first) against it."""
    kernel = Kernel()
    key = HostKey.load_or_create(tmp / "host.key")
    path = tmp / "baseline.zip"
    save_baseline(capture(kernel).baseline, path, key)
    public = key.public_key_bytes()
    regions = read_manifest(path, public).regions
    spans = [(e.start, e.size) for e in regions.values()]
    out: dict[str, float | int] = {"bytes": sum(s for _, s in spans)}
    out["modules"] = len(Path("/proc/modules").read_text().splitlines())
    out["floor_ms"] = median_ms(lambda: floor(kernel, spans), ROUNDS)
    outcome = verify(kernel, path, public)
    out["check_findings"] = len(outcome.findings)
    out["check_ms"] = median_ms(lambda: verify(kernel, path, public), ROUNDS)
    keyed = KeyedPages.open(kernel)
    if keyed is not None:
        verify(kernel, path, public, keyed)  # the first sweep SHA-256s every page
        out["sweep_ms"] = median_ms(lambda: verify(kernel, path, public, keyed), ROUNDS)
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
