"""patchguard's check and the guard's sweep against LKRG's forced integrity check, side by side,
in one boot of the lab guest (Debian's 6.1 under QEMU, TCG).

LKRG is built here from the pinned source (../shared/thirdparty/lkrg-ae1edab.tar.gz, never
copied into the project) against the lab's headers, as tests/lab/test_lab_lkrg.py does; the
guest runs bench/lkrg_guest.py. Prints the floor (read + SHA-256 every page), check, the
guard's sweep hashed in the kernel, LKRG's check, and the ratios; target: the sweep <= 5 x LKRG.
Run as root, after lab/build: .venv/bin/python bench/lkrg.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("tests", "tests/lab")]
from support.lab_guest import run_lab  # noqa: E402
from test_lab_lkrg import build_lkrg  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as out:
        results = Path(out)
        (results / "lkrg.ko").write_bytes(build_lkrg(Path(work)).read_bytes())
        command = ["python3", "/src/bench/lkrg_guest.py", "/results"]
        run = run_lab(results, (), command, timeout=1200)
        if run.returncode != 0:
            sys.exit(f"lab/run exited {run.returncode}: {run.stderr[-2000:]}")
        found = json.loads((results / "lkrg_bench.json").read_text())
    pg, lkrg = found["patchguard"], found["lkrg"]
    print(f"lab guest, {pg['bytes'] / 1e6:.1f} MB of kernel code through {pg['reader']}")
    print(f"floor (read + SHA-256 every page): {pg['floor_ms']:.1f} ms")
    ratio = pg["check_ms"] / pg["floor_ms"]
    print(f"check, nothing changed: {pg['check_ms']:.1f} ms ({ratio:.2f} x floor)")
    if "sweep_ms" in pg:
        print(
            f"guard sweep hashed in the kernel: first {pg['sweep_first_ms']:.1f} ms, then "
            f"{pg['sweep_ms']:.1f} ms ({pg['sweep_ms'] / pg['floor_ms']:.2f} x floor, "
            f"{pg['sweep_sha256_pages']} pages SHA-256'd)"
        )
    if "check_ms" not in lkrg:
        sys.exit(f"LKRG did not load: {lkrg}")
    print(f"LKRG forced check: {lkrg['check_ms']:.1f} ms (median of {len(lkrg['rounds_ms'])})")
    print(f"check / LKRG: {pg['check_ms'] / lkrg['check_ms']:.1f} x")
    if "sweep_ms" in pg:
        print(f"sweep / LKRG: {pg['sweep_ms'] / lkrg['check_ms']:.1f} x (target <= 5)")


if __name__ == "__main__":
    main()
