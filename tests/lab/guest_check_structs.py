"""Run INSIDE the lab guest by tests/lab/test_lab_check_structs.py: a baseline of a kernel with
modules, then `check` run in this process twice, watched by an audit hook (every file opened,
every fork): against that baseline, and against the same baseline signed again without the
module records it holds (integrity/module_records.py). Writes <results>/guest_check_structs.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, "/src/src")

from patchguard.cli import main as patchguard
from patchguard.integrity.module_records import MODULE_LAYOUT, MODULE_STRUCTS
from patchguard.integrity.store import load_baseline, save_baseline
from patchguard.signing import HostKey

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else "/results")
WORK = Path("/tmp/check-structs")
SEEN: list[tuple[str, str]] = []


def watch(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str | Path):
        SEEN.append((event, str(args[0])))
    elif event == "os.fork":
        SEEN.append((event, ""))


def checked(baseline: Path) -> dict[str, Any]:
    """One check in this process: its exit code, its report, what it opened and forked."""
    SEEN.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = patchguard(["check", "--json", "--baseline", str(baseline), "--key", str(key())])
    seen = list(SEEN)
    return {
        "rc": code,
        "report": json.loads(out.getvalue()),
        "opened": sorted({p for e, p in seen if e == "open"}),
        "forks": sum(e == "os.fork" for e, _ in seen),
    }


def key() -> Path:
    return WORK / "host.key"


def without_structs(baseline: Path) -> Path:
    """The same baseline, with no module records in its summary, signed by the same key."""
    whole = load_baseline(baseline, HostKey.load(key()).public_key_bytes())
    summary = {k: v for k, v in whole.summary.items() if k not in (MODULE_STRUCTS, MODULE_LAYOUT)}
    bare = WORK / "bare.zip"
    save_baseline(
        type(whole)(whole.meta, whole.regions, whole.sites, summary), bare, HostKey.load(key())
    )
    return bare


def run() -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    baseline = WORK / "baseline.zip"
    where = ["--out", str(baseline), "--key", str(key())]
    made = subprocess.run(
        [sys.executable, "-m", "patchguard.cli", "baseline", "create", *where],
        capture_output=True,
        text=True,
        check=False,
    )
    found: dict[str, Any] = {"baseline": {"rc": made.returncode, "stderr": made.stderr}}
    if made.returncode != 0:
        return found
    summary = load_baseline(baseline, HostKey.load(key()).public_key_bytes()).summary
    found["module_structs"] = summary.get(MODULE_STRUCTS)
    found["module_layout"] = summary.get(MODULE_LAYOUT)
    sys.addaudithook(watch)
    found["with_structs"] = checked(baseline)
    found["btf_parser_imported"] = "patchguard.kernel.btf" in sys.modules
    found["without_structs"] = checked(without_structs(baseline))
    return found


if __name__ == "__main__":
    try:
        document = run()
    except Exception:
        document = {"errors": traceback.format_exc()}
    (RESULTS / "guest_check_structs.json").write_text(json.dumps(document))
