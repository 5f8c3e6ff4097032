"""Scan speed as ratios measured in one run.

floor = read /proc/kallsyms + read and SHA-256 the core kernel text through the same memory
reader the scan uses. The scan does that and more (every surface); target: scan <= 1.5 x floor.
Also: kallsyms parse time for this kernel's symbol count (target <= 80 ms for 122k symbols).

--process adds what a user waits for (--process-only: that alone, for the lab's slow guest),
whole processes timed in one run (interleaved rounds): `patchguard scan --json` against the
floor process (bench/floor_process.py: Python start, kallsyms, the core text read and
SHA-256'd through the eBPF reader; target <= 1.3), and `patchguard --version` and `--help`
against `python3 -c pass` (target <= 1.2).
Run as root: .venv/bin/python bench/scan.py [--rounds N] [--process | --process-only]
[--against OTHER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

from timing import (
    load_note,
    median_cpu_seconds,
    median_seconds,
    patchguard_command,
    process_costs,
    ratios,
)

from patchguard.kernel import Kernel
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.memory import read_chunks
from patchguard.scan import run_scan
from patchguard.surfaces import all_surfaces


def floor_once(kernel: Kernel, start: int, end: int) -> None:
    Path("/proc/kallsyms").read_bytes()
    memory = kernel.memory()
    digest = hashlib.sha256()
    for _, chunk in read_chunks(memory, start, end):
        digest.update(chunk)


def scan_once(skip: tuple[str, ...] = ()) -> None:
    kernel = Kernel()
    try:
        run_scan(kernel, [s for s in all_surfaces() if s.name not in skip])
    finally:
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--process", action="store_true", help="whole processes too")
    parser.add_argument(
        "--process-only", action="store_true", help="whole processes alone (the lab: TCG is slow)"
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="with --process(-only): also `scan --json` of another checkout (its bin/ and src/: "
        "a change's before), in the same interleaved rounds",
    )
    args = parser.parse_args()
    rounds = args.rounds
    if args.process_only:
        whole_process(rounds, args.against)
        print(load_note())
        return

    text = Path("/proc/kallsyms").read_text()
    parse = median_seconds(lambda: SymbolTable.parse(text).build(), rounds)
    symbols = len(SymbolTable.parse(text))

    kernel = Kernel()
    core = kernel.kallsyms.range("text")
    assert core is not None, "kallsyms shows no _stext/_etext"
    floor = median_seconds(lambda: floor_once(kernel, core.start, core.end), rounds)
    reader = kernel.memory_reader
    kernel.close()
    scan = median_seconds(scan_once, rounds)
    kernel = Kernel()
    floor_cpu = median_cpu_seconds(lambda: floor_once(kernel, core.start, core.end), rounds)
    kernel.close()
    scan_cpu = median_cpu_seconds(scan_once, rounds)
    # The cross-view and code-walking surfaces added after the first scan (syscall dispatch:
    # disassembles x64_sys_call and resolves ~830 targets; processes: kill(2) over the whole
    # pid space; netfilter) are shown apart, so their cost is visible.
    later = ("syscalls", "entry", "processes", "netfilter")
    first = median_seconds(lambda: scan_once(later), rounds)
    alone = per_surface(rounds)

    print(f"kallsyms parse: {parse * 1000:.1f} ms for {symbols} symbols (target <= 80 ms for 122k)")
    print(
        f"floor (kallsyms read + {core.size / 1e6:.1f} MB core text read+sha256 via {reader}): "
        f"{floor * 1000:.1f} ms"
    )
    print(f"scan (all surfaces): {scan * 1000:.1f} ms, ratio {scan / floor:.2f} (target <= 1.5)")
    print(
        f"in CPU time: floor {floor_cpu * 1000:.1f} ms, scan {scan_cpu * 1000:.1f} ms, "
        f"ratio {scan_cpu / floor_cpu:.2f}"
    )
    print(
        f"scan of the first surfaces (without {', '.join(later)}): {first * 1000:.1f} ms, "
        f"ratio {first / floor:.2f}"
    )
    print("each surface alone (collect + assess, kernel state shared, median ms): " + alone)
    if args.process:
        whole_process(rounds, args.against)
    print(load_note())


FLOOR = str(Path(__file__).with_name("floor_process.py"))
# The console script as a user runs it (beside this interpreter in a venv), else the module.
PATCHGUARD = patchguard_command()


def whole_process(rounds: int, against: Path | None = None) -> None:
    """The commands as a user runs them, each a fresh interpreter, against their floors."""
    scan = ["scan", "--json", "--fail-on", "critical"]
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "version": [*PATCHGUARD, "--version"],
        "help": [*PATCHGUARD, "--help"],
        "floor": [sys.executable, FLOOR],
        "scan": [*PATCHGUARD, *scan],
        "records": [*PATCHGUARD, "scan", "--json", "--records", "--fail-on", "critical"],
    }
    if against is not None:
        script = str(against / "bin" / "patchguard")
        commands["before"] = ["env", f"PYTHONPATH={_compiled(against / 'src')}", sys.executable]
        commands["before"] += [script, *scan]
    t = process_costs(commands, rounds)
    print(f"process: python3 -c pass {t['python'].wall * 1000:.0f} ms")
    print(f"process: --version {ratios(t, 'version', 'python')} (target <= 1.2)")
    print(f"process: --help {ratios(t, 'help', 'python')} (target <= 1.2)")
    print(f"process: floor {t['floor'].wall * 1000:.0f} ms, {t['floor'].cpu * 1000:.0f} ms CPU")
    print(f"process: scan --json {ratios(t, 'scan', 'floor')} (target <= 1.3)")
    print(f"process: scan --json --records {ratios(t, 'records', 'floor')}")
    if against is not None:
        print(f"process: scan --json of {against} {ratios(t, 'before', 'floor')}")


def _compiled(src: Path) -> Path:
    """`src` (holding patchguard/) with its bytecode written, as this tree's is."""
    import compileall

    if not (src / "patchguard").is_dir() or not compileall.compile_dir(src, quiet=2):
        raise SystemExit(f"{src}: no patchguard package to compile there")
    return src.resolve()


def per_surface(rounds: int) -> str:
    """What each surface costs on its own, run one after another on one Kernel (so the shared
    parses, kallsyms and BTF, are paid by the first surface that needs them)."""
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        kernel = Kernel()
        try:
            for surface in all_surfaces():
                t0 = time.perf_counter()
                surface.assess(surface.collect(kernel))
                times.setdefault(surface.name, []).append(time.perf_counter() - t0)
        finally:
            kernel.close()
    return ", ".join(f"{n} {statistics.median(t) * 1000:.1f}" for n, t in times.items())


if __name__ == "__main__":
    main()
