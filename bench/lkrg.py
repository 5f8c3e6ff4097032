"""patchguard's check and the guard's sweep against LKRG's forced integrity check, side by side,
in one boot of the lab guest (Debian's 6.1 under QEMU, TCG).

LKRG is built here from the pinned source (../shared/thirdparty/lkrg-ae1edab.tar.gz, never
copied into the project) against the lab's headers, as tests/lab/test_lab_lkrg.py does; the
guest runs bench/lkrg_guest.py. Prints the floor (read + SHA-256 every page), check, the
guard's sweep hashed in the kernel, LKRG's check, and the ratios; target: the sweep <= 5 x LKRG.
LKRG's check is timed two ways: the kernel log's clock (marker to "System is clean"), and
perf_counter (the clock our own times use) to the moment we read that record. Under TCG the
log's clock need not run at CLOCK_MONOTONIC's rate; the guest measures the two against each
other over 2 s and the ratios use LKRG's time at CLOCK_MONOTONIC's rate.
Run as root, after lab/build: .venv/bin/python bench/lkrg.py [--lkrg-ko built/lkrg.ko]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("tests", "tests/lab")]
from support.lab_guest import run_lab  # noqa: E402
from test_lab_lkrg import build_lkrg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lkrg-ko", type=Path, help="an lkrg.ko built before (else built now)")
    parser.add_argument(
        "--chunk-pages", type=int, help="pages a BPF run hashes (PG_CHUNK_PAGES; 512 if not given)"
    )
    parser.add_argument("--save", type=Path, help="write the guest's JSON here too")
    parser.add_argument("--profile", action="store_true", help="print the sweeps' profile")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as out:
        results = Path(out)
        built = args.lkrg_ko or build_lkrg(Path(work))
        (results / "lkrg.ko").write_bytes(built.read_bytes())
        command = ["python3", "/src/bench/lkrg_guest.py", "/results"]
        if args.chunk_pages:
            command[:0] = ["env", f"PG_CHUNK_PAGES={args.chunk_pages}"]
        run = run_lab(results, (), command, timeout=1200)
        if run.returncode != 0:
            sys.exit(f"lab/run exited {run.returncode}: {run.stderr[-2000:]}")
        found = json.loads((results / "lkrg_bench.json").read_text())
    if args.save:
        args.save.write_text(json.dumps(found, indent=2))
    print(f"host load average at the start {load_at_start}, at the end {os.getloadavg()}")
    show(found["patchguard"], found["lkrg"])
    if args.profile and "sweep_profile" in found["patchguard"]:
        print(found["patchguard"]["sweep_profile"])


ROUNDS_NOTE = "12 more sweeps, each split as it ran"


def show(pg: dict[str, Any], lkrg: dict[str, Any]) -> None:
    print(f"lab guest, {pg['bytes'] / 1e6:.1f} MB of kernel code through {pg['reader']}")
    parts = ("core_text", "rodata", "modules")
    print("  of which " + ", ".join(f"{p} {pg[f'bytes_{p}'] / 1e6:.1f} MB" for p in parts))
    print(f"floor (read + SHA-256 every page): {pg['floor_ms']:.1f} ms")
    ratio = pg["check_ms"] / pg["floor_ms"]
    print(f"check, nothing changed: {pg['check_ms']:.1f} ms ({ratio:.2f} x floor)")
    if "sweep_ms" in pg:
        print(
            f"guard sweep hashed in the kernel: first {pg['sweep_first_ms']:.1f} ms, then "
            f"{pg['sweep_ms']:.1f} ms ({pg['sweep_ms'] / pg['floor_ms']:.2f} x floor, "
            f"{pg['sweep_sha256_pages']} pages SHA-256'd as moved, "
            f"{pg.get('sweep_rechecked_pages', 0)} as the rolling recheck's share, "
            f"{pg.get('sweep_runs', '?')} BPF runs)"
        )
    if "part_bpf_ms" in pg:
        bpf, copy, sha = pg["part_bpf_ms"], pg["part_copy_ms"], pg["part_sha256_ms"]
        rest = pg["sweep_ms"] - bpf - sha
        print(
            f"  of a sweep: BPF runs {bpf:.1f} ms (copying alone {copy:.1f}), SHA-256 of the "
            f"judged pages {sha:.1f} ms, the rest (Python, /proc/modules) {rest:.1f} ms"
        )
    if "sweep_whole_ms" in pg:
        print(
            f"  {ROUNDS_NOTE}: {pg['sweep_whole_ms']:.1f} ms, of which in its BPF runs "
            f"{pg['sweep_kernel_ms']:.1f} ms and the rest {pg['sweep_rest_ms']:.1f} ms (medians)"
        )
    if "check_ms" not in lkrg:
        sys.exit(f"LKRG did not load: {lkrg}")
    hashed = lkrg["hashed_bytes"]
    print("LKRG SipHash-2-4s " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in hashed.items()))
    print(f"  and the modules' text (the {pg['bytes_modules'] / 1e6:.1f} MB above)")
    n, rate = len(lkrg["rounds_ms"]), lkrg["kmsg_clock_rate"]
    low, high = min(lkrg["rounds_ms"]), max(lkrg["rounds_ms"])
    print(
        f"LKRG forced check, kernel log clock: {lkrg['check_ms']:.1f} ms "
        f"(median of {n}, {low:.1f}-{high:.1f})"
    )
    print(f"  kernel log clock runs at {rate:.3f} x CLOCK_MONOTONIC over 2 s")
    lkrg_ms = lkrg["check_log_ms_at_monotonic_rate"]
    print(f"  at CLOCK_MONOTONIC's rate: {lkrg_ms:.1f} ms")
    print(f"  perf_counter, trigger write to reading the record: {lkrg['check_wall_ms']:.1f} ms")
    print(f"check / LKRG: {pg['check_ms'] / lkrg_ms:.1f} x")
    if "sweep_ms" in pg:
        print(f"sweep / LKRG: {pg['sweep_ms'] / lkrg_ms:.1f} x (target <= 5)")


if __name__ == "__main__":
    main()
