"""`patchguard check` as a whole process against the floor process, in one boot of the lab
guest (Debian's 6.1 under QEMU, TCG; --kernel newer for 6.12): bench/check.py --process-only
run in the guest, which takes a baseline with the patchguard command and times both processes
in interleaved rounds (wall and CPU). Target: check <= 1.3 x the floor process.
Under TCG a guest's speed follows the host's load: only the ratios of one run compare.
--before SRC also times another source tree's check (its SRC/patchguard, copied into the
guest's /results) in the same rounds, as bench/check.py --before does here.
Run as root, after lab/build: .venv/bin/python bench/check_guest.py [--rounds 7] [--before SRC]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("tests", "tests/lab")]
from support.lab_guest import run_lab  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kernel", choices=("stock", "newer"), default="stock")
    parser.add_argument("--before", type=Path, metavar="SRC", help="another tree's src/")
    args = parser.parse_args()
    command = ["python3", "/src/bench/check.py", "--process-only", "--rounds", str(args.rounds)]
    with tempfile.TemporaryDirectory() as out:
        if args.before is not None:
            shutil.copytree(
                args.before / "patchguard",
                Path(out) / "before" / "patchguard",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            command += ["--before", "/results/before"]
        run = run_lab(Path(out), (), command, timeout=1500, kernel=args.kernel)
    if run.returncode != 0:
        sys.exit(f"lab/run exited {run.returncode}: {run.stderr[-2000:]}")
    print(f"lab guest ({args.kernel} kernel), {args.rounds} rounds:")
    for line in run.stdout.splitlines():  # the baseline's summary, both processes, the load
        print(f"  {line.rstrip()}")
    one, five, _ = os.getloadavg()
    print(f"host load average {one:.1f} (5 min {five:.1f}) at the end")


if __name__ == "__main__":
    main()
