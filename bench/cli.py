"""The command line's own cost, as ratios measured in one run: `patchguard --version` and
`patchguard --help` (and one command group's help) as whole processes against `python3 -c pass`
(target <= 1.2), wall and CPU time, interleaved rounds. The console script is run as a user
runs it (beside this interpreter in a venv).
Run: .venv/bin/python bench/cli.py [--rounds N]
"""

from __future__ import annotations

import argparse
import sys

from timing import load_note, patchguard_command, process_costs, ratios

PATCHGUARD = patchguard_command()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    costs = process_costs(
        {
            "python": [sys.executable, "-c", "pass"],
            "version": [*PATCHGUARD, "--version"],
            "help": [*PATCHGUARD, "--help"],
            "ledger help": [*PATCHGUARD, "ledger", "--help"],
        },
        rounds,
    )
    python = costs["python"]
    print(f"python3 -c pass: {python.wall * 1000:.1f} ms wall, {python.cpu * 1000:.1f} ms CPU")
    for name in ("version", "help", "ledger help"):
        print(f"patchguard {name}: {ratios(costs, name, 'python')} (target <= 1.2)")
    print(load_note())


if __name__ == "__main__":
    main()
