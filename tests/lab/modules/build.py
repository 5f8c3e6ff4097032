"""Build the lab's test rootkits (the *.c here) on the HOST against the lab guest's kernel
headers, and cache the .ko files by source hash. Never load them on the host.

    python3 tests/lab/modules/build.py         # prints the directory holding the .ko files
    python3 tests/lab/modules/build.py newer   # the same for the newer kernel (MODULES_NEWER)

The stock 6.1 kernel gets every module; the newer kernel (lab/run --kernel newer) only those a
newer-kernel test needs (MODULES_NEWER: the others are written for 6.1's API), built against its
own headers (lab.json's newer kbuild). The cache key hashes every source file here (Makefile,
*.c, *.h), the lab build's key (which covers the kernel and headers versions) and the kernel
built for, so a second run, or a run after an unrelated change, builds nothing. The .ko files
go to $PATCHGUARD_LAB_CACHE/modules/<key>/ (another directory under the user's cache if that
one is not writable); kbuild runs in a scratch copy, so the repository gets no build products.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("PATCHGUARD_LAB_CACHE", "/var/cache/patchguard-lab"))
MODULES = ("pg_syscall_hook", "pg_inline_hook")
# guest_function_hooks.py's boot: ftrace and kprobe hooks, module hiding, and the livepatch.
MODULES2 = ("pg_hide_module", "pg_ftrace_hook", "pg_kprobe_hook", "pg_livepatch")
# guest_hiding_and_entry.py's boot: a hidden pid, the LSTAR redirect, netfilter hooks.
MODULES3 = ("pg_hide_pid", "pg_nf_hook", "pg_lstar")
# The sockets boot's (sockets_checks.py): a socket hidden from /proc/net/tcp.
MODULES_SOCKETS = ("pg_hide_sock",)
# the views that lie: khook-style stubs in memory of no module, the taint cleared
MODULES_TRUTH = ("pg_khook", "pg_taint_clear", "pg_kallsyms_filter")
# tasks_checks.py's boot: a task hidden from every text view, and unlinked from the task list
# and the pid table; a getdents64 filter alone; lines dropped from every write
MODULES_TASKS = ("pg_hide_task", "pg_write_filter", "pg_hide_pid")
# the ftrace ops boot (ftrace_ops_checks.py): an ops hidden from enabled_functions, a module
# hidden from kallsyms and sysfs listings, a module whose sysfs kobject is removed
MODULES_OPS = ("pg_ops_filter", "pg_mod_hide", "pg_sysfs_removed")
# the tracepoint probes boot (tracepoint_probes_checks.py): a probe of a module, and one in a
# stub of no module
MODULES_TP = ("pg_tp_probe",)
# the truth corpus's boot (test_lab_corpus.py): a live patch as a distribution ships one
MODULES_CORPUS = ("pg_klp_version",)
# the direct call boot (direct_call_checks.py): a direct ftrace call to code of a module
MODULES_DIRECT = ("pg_direct_call",)
# the guard's wake boot (guest_guard_wake.py): a module that does nothing, loaded again and again
MODULES_GUARD = ("pg_noop",)
ALL_MODULES = (
    MODULES
    + MODULES2
    + MODULES3
    + MODULES_SOCKETS
    + MODULES_TRUTH
    + MODULES_TASKS
    + MODULES_OPS
    + MODULES_TP
    + MODULES_CORPUS
    + MODULES_DIRECT
    + MODULES_GUARD
)
# the newer kernel's boots: a direct ops whose own direct_call (6.6+) leads elsewhere
MODULES_NEWER = ("pg_direct_call", "pg_nf_hook")
COMPILER = "gcc-12"  # what Debian's 6.1 and bookworm's 6.12 kernels are built with
STALE_AFTER = 86400.0  # seconds


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """What to build for one of the lab's kernels, and against which headers."""

    release: str
    kbuild: str  # relative to the lab build's directory
    modules: tuple[str, ...]
    make_args: tuple[str, ...]


def target(lab: dict[str, Any], kernel: str) -> Target:
    if kernel == "stock":
        return Target(lab["kernel_release"], lab.get("kbuild", "kbuild"), ALL_MODULES, ())
    newer = lab.get("newer", {})
    if kernel != "newer" or "kbuild" not in newer:
        raise BuildError(f"no headers for the {kernel!r} kernel in this lab build: run lab/build")
    only = f"PG_MODULES={' '.join(MODULES_NEWER)}"
    return Target(newer["kernel_release"], newer["kbuild"], MODULES_NEWER, (only,))


def sources() -> list[Path]:
    return sorted(p for p in HERE.iterdir() if p.name == "Makefile" or p.suffix in (".c", ".h"))


def lab_build() -> dict[str, Any]:
    lab = CACHE / "current" / "lab.json"
    if not lab.is_file():
        raise BuildError(f"lab not built: run lab/build (no {lab})")
    info: dict[str, Any] = json.loads(lab.read_text())
    return info


def cache_key(lab: dict[str, Any], release: str) -> str:
    digest = hashlib.sha256(f"{lab['key']} {release}\n".encode())
    for path in sources():
        digest.update(f"{path.name} {len(path.read_bytes())}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    preferred = CACHE / "modules"
    try:
        preferred.mkdir(exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "patchguard-lab-modules"


def build(kernel: str = "stock") -> Path:
    """The directory of the .ko files built for `kernel` ("stock" or "newer", as lab/run
    --kernel), building them first if the cache has none."""
    lab = lab_build()
    want = target(lab, kernel)
    root = cache_root()
    out = root / cache_key(lab, want.release)
    if all((out / f"{name}.ko").is_file() for name in want.modules):
        return out
    for tool in (COMPILER, "make"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found: the test modules build with {COMPILER} and make")
    root.mkdir(parents=True, exist_ok=True)
    # Two pytest processes (tests/lab runs as two streams) may both find the build missing: the
    # second waits for the first and takes its .ko files, rather than replacing the directory
    # while the first copies from it.
    with exclusive(root / f"{out.name}.lock"):
        if not all((out / f"{name}.ko").is_file() for name in want.modules):
            compile_into(out, CACHE / "current" / want.kbuild, want)
            drop_stale(root, out)
    return out


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an flock on `lock` (created if missing); the kernel drops it if we die."""
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def compile_into(out: Path, kbuild: Path, want: Target) -> None:
    """kbuild in a scratch copy of the sources; `out` gets the .ko files and the log, whole."""
    root = out.parent
    with tempfile.TemporaryDirectory(prefix="pg-modules-", dir=root) as tmp:
        work = Path(tmp) / "src"
        work.mkdir()
        for path in sources():
            shutil.copy2(path, work / path.name)
        run = subprocess.run(
            ["make", "-C", str(kbuild), f"M={work}", f"CC={COMPILER}", *want.make_args, "modules"],
            capture_output=True,
            text=True,
            check=False,
        )
        missing = [name for name in want.modules if not (work / f"{name}.ko").is_file()]
        if run.returncode != 0 or missing:
            raise BuildError(
                f"kbuild failed (exit {run.returncode}, missing {missing}):\n"
                f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
            )
        staged = Path(tmp) / "ko"
        staged.mkdir()
        for name in want.modules:
            shutil.copy2(work / f"{name}.ko", staged / f"{name}.ko")
        (staged / "build.log").write_text(run.stdout + run.stderr)
        shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier attempt
        staged.rename(out)


def drop_stale(root: Path, kept: Path) -> None:
    """Remove builds of other sources once a day has passed since they were made. Not at
    once: on a machine shared by several branches, each with its own module sources, deleting
    every other build made each branch's next lab run build them all again."""
    for old in root.iterdir():
        if old == kept or not old.is_dir() or old.name.startswith("pg-modules-"):
            continue
        if time.time() - old.stat().st_mtime > STALE_AFTER:
            shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    try:
        print(build(sys.argv[1] if len(sys.argv) > 1 else "stock"))
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        sys.exit(1)
