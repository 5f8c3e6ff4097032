"""`check` speed as ratios measured in one run.

floor = read and SHA-256 the same bytes (every baseline region) through the same memory
reader; check = verify the signed manifest and the boot, re-read every region, hash each page,
explain what changed. Target: check (nothing changed) <= 1.3 x floor. Then the guard's sweep
as it runs after its first: pages hashed in the kernel under a secret key (a fresh one every
8 sweeps), only moved pages SHA-256'd, the baseline file read and verified once while it is the
same file (integrity/keyed_pages.py); target below the floor.
Scaling: the same with 0, 10 and 100 programs attached to distinct tracepoints (each flips its
tracepoint's jump labels and static calls), or with --fentry to distinct kernel functions (each
patches the function's ftrace site to call a BPF trampoline), printing the cost per explained
site. fentry programs are refused on these machines; the QEMU lab measures them:
  lab/run -- python3 bench/check.py --fentry
--process adds whole processes timed in one run (interleaved rounds): `patchguard check --json`
against the floor process (bench/floor_process.py: Python start, kallsyms, the core text read
and SHA-256'd through the eBPF reader); target <= 1.3. --process-only times those two alone
(what bench/check_guest.py runs in the lab guest, where the rest costs minutes under TCG).
Run as root: .venv/bin/python bench/check.py [--rounds N] [--fentry] [--process|--process-only]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from timing import load_note, median_ms, patchguard_command, process_costs, ratios

from patchguard.integrity.check import capture, verify
from patchguard.integrity.keyed_pages import KeyedPages
from patchguard.integrity.store import read_manifest, save_baseline
from patchguard.kernel import Kernel
from patchguard.kernel.bpf.syscall import BpfError
from patchguard.kernel.memory import read_chunks
from patchguard.signing import HostKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import bpfprogs as bp


def floor_once(kernel: Kernel, spans: list[tuple[int, int]]) -> None:
    memory = kernel.memory()
    for start, size in spans:
        for _, chunk in read_chunks(memory, start, start + size):
            view = memoryview(chunk)
            for i in range(0, len(chunk), 4096):
                hashlib.sha256(view[i : i + 4096]).digest()


def tracepoints(limit: int) -> Iterator[tuple[str, str]]:
    events = Path("/sys/kernel/tracing/events")
    for category in sorted(p for p in events.iterdir() if p.is_dir()):
        if category.name in ("syscalls", "ftrace"):
            continue  # syscalls share one site; ftrace events are not attachable
        for event in sorted(p for p in category.iterdir() if (p / "id").exists()):
            yield category.name, event.name
            limit -= 1
            if limit == 0:
                return


def functions(limit: int) -> Iterator[str]:
    """Core kernel functions ftrace can patch (available_filter_functions), in its order."""
    listed = Path("/sys/kernel/tracing/available_filter_functions").read_text().splitlines()
    for line in listed:
        if "[" not in line and not line.startswith("__"):
            yield line.split()[0]
            limit -= 1
            if limit == 0:
                return


def attach_one(target: str | tuple[str, str]) -> bp.Loaded:
    """fentry on a function name, else a program on a (category, event) tracepoint."""
    if isinstance(target, str):
        return bp.attach_fentry(target, "pg_bench")
    return bp.attach_tracepoint(*target, "pg_bench")


@contextlib.contextmanager
def attached(n: int, fentry: bool) -> Iterator[int]:
    progs: list[bp.Loaded] = []
    targets: Iterator[str | tuple[str, str]] = functions(n * 3) if fentry else tracepoints(n * 3)
    try:
        for target in targets:
            if len(progs) == n:
                break
            with contextlib.suppress(OSError, RuntimeError, BpfError):
                progs.append(attach_one(target))
        yield len(progs)
    finally:
        for prog in progs:
            prog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--fentry", action="store_true", help="fentry programs, not tracepoints")
    parser.add_argument("--process", action="store_true", help="whole processes too")
    parser.add_argument("--process-only", action="store_true", help="whole processes alone")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="SRC",
        help="with --process-only: also time the check of another source tree's patchguard "
        "package (SRC/patchguard, e.g. `git archive <commit> src | tar -x -C DIR`, SRC=DIR/src)",
    )
    args = parser.parse_args()
    if args.process_only:
        processes_alone(args.rounds, args.before)
        return
    rounds, kind = args.rounds, "fentry" if args.fentry else "tracepoint"
    bp.tracepoint_id("sched", "sched_switch")  # mounts tracefs if needed

    kernel = Kernel()
    with tempfile.TemporaryDirectory() as tmp:
        key = HostKey.load_or_create(Path(tmp) / "host.key")
        path = Path(tmp) / "baseline.zip"
        save_baseline(capture(kernel).baseline, path, key)
        public = key.public_key_bytes()
        spans = [(e.start, e.size) for e in read_manifest(path, public).regions.values()]
        covered = sum(size for _, size in spans)
        floor = median_ms(lambda: floor_once(kernel, spans), rounds)
        check = median_ms(lambda: verify(kernel, path, public), rounds)
        print(f"bytes covered: {covered} ({covered / 1e6:.1f} MB) through {kernel.memory_reader}")
        print(f"floor (read + sha256 per page): {floor:.1f} ms")
        print(f"check, nothing changed: {check:.1f} ms")
        print(f"ratio check/floor: {check / floor:.2f} (target <= 1.3)")
        keyed_sweeps(kernel, path, public, floor, rounds)
        if args.process:
            whole_process(Path(tmp), rounds)
        for n in (10, 100):
            with attached(n, args.fentry) as got:
                kernel.refresh()  # the new programs' trampolines are new kallsyms lines
                outcome = verify(kernel, path, public)
                sites = outcome.state.counts["explained"]
                tampering = outcome.state.counts["tampering"]
                ms = median_ms(lambda: verify(kernel, path, public), max(3, rounds // 2))
            per_site = (ms - check) / sites if sites else float("nan")
            print(
                f"{got} {kind} programs: {sites} explained sites, {tampering} tampering, "
                f"check {ms:.1f} ms, {per_site:.2f} ms per explained site"
            )
    kernel.close()
    print(load_note())


def keyed_sweeps(kernel: Kernel, path: Path, public: bytes, floor: float, rounds: int) -> None:
    """The guard's sweep, hashed in the kernel (integrity/keyed_pages.py), nothing changed,
    after its first sweep (which SHA-256s every page): against the floor and LKRG's way."""
    keyed = KeyedPages.open(kernel)
    if keyed is None:
        print("keyed sweeps: the kernel refuses the in-kernel hash (bpf_loop, BTF)")
        return
    try:
        first = median_ms(lambda: verify(kernel, path, public, keyed), 1)
        sweep = median_ms(lambda: verify(kernel, path, public, keyed), rounds)
        counts = keyed.counts
        print(
            f"guard sweep hashed in the kernel: first {first:.1f} ms, then {sweep:.1f} ms "
            f"({counts.hashed} pages SHA-256'd as moved, {counts.rechecked} rechecked, "
            f"{counts.runs} BPF runs), ratio sweep/floor {sweep / floor:.2f}"
        )
    finally:
        keyed.close()


def processes_alone(rounds: int, before: Path | None = None) -> None:
    """A baseline taken through the patchguard command, then the processes timed."""
    with tempfile.TemporaryDirectory() as tmp:
        where = ["--out", str(Path(tmp) / "baseline.zip"), "--key", str(Path(tmp) / "host.key")]
        made = subprocess.run(
            [*patchguard_command(), "baseline", "create", *where],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise SystemExit(f"baseline create: exit {made.returncode}: {made.stderr.strip()}")
        print(made.stdout.strip())
        whole_process(Path(tmp), rounds, before)
    print(load_note())


def whole_process(tmp: Path, rounds: int, before: Path | None = None) -> None:
    floor = str(Path(__file__).with_name("floor_process.py"))
    words = ["check", "--json", "--fail-on", "critical"]
    words += ["--baseline", str(tmp / "baseline.zip"), "--key", str(tmp / "host.key")]
    commands = {"floor": [sys.executable, floor], "check": [*patchguard_command(), *words]}
    covered = _beyond_core_text(tmp)
    if covered is not None:
        commands["floor_covered"] = [sys.executable, floor, *covered[1]]
    if before is not None:
        commands["before"] = [sys.executable, "-c", _command_line_of(before), *words]
    t = process_costs(commands, rounds)
    print(f"process: floor {t['floor'].wall * 1000:.0f} ms, {t['floor'].cpu * 1000:.0f} ms CPU")
    print(f"process: check --json {ratios(t, 'check', 'floor')} (target <= 1.3)")
    if covered is not None:
        print(
            f"process: against the floor of every byte the baseline covers "
            f"({covered[0] / 1e6:.1f} MB): {ratios(t, 'check', 'floor_covered')}"
        )
    if before is not None:
        print(f"process: check --json of {before} {ratios(t, 'before', 'floor')}")


def _beyond_core_text(tmp: Path) -> tuple[int, list[str]] | None:
    """(bytes, START:SIZE spans in hex) of every region the baseline at `tmp` holds, where it
    holds more than the core text and its two tables (rodata, modules); else None."""
    public = HostKey.load(tmp / "host.key").public_key_bytes()
    regions = read_manifest(tmp / "baseline.zip", public).regions
    if set(regions) <= {"core_text", "jump_table", "static_call_sites"}:
        return None
    entries = regions.values()
    return sum(e.size for e in entries), [f"{e.start:x}:{e.size:x}" for e in entries]


def _command_line_of(src: Path) -> str:
    """The patchguard command run from another source tree, compiled as an install has it."""
    import compileall

    if not compileall.compile_dir(str(src / "patchguard"), quiet=2):
        raise SystemExit(f"{src}: compileall failed")
    path = f"import sys; sys.path.insert(0, {str(src)!r}); "
    return path + "import patchguard.cli as c; c.command_line()"


if __name__ == "__main__":
    main()
