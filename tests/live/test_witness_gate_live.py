"""The guard's looks go through the witness gate: an exception approved but not witnessed is
reported (and not applied), and once witnesses cosign a checkpoint with it the report goes.
A real Guard on this kernel, reading only the posture surface (sysctls, read-only)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from support.guard_in_process import in_process_guard
from support.witnesses import World, world

from patchguard.guard.config import parse_config

__all__ = ["world"]  # the fixture (tests/support/witnesses.py)


def guard_config(w: World, tmp_path: Path) -> str:
    witnesses = json.dumps([x.signer.verifier.vkey for x in w.witnesses])
    return (
        f'[guard]\nbaseline = ""\nledger = "{w.log.path}"\nkey = "{tmp_path / "host.key"}"\n'
        f'sweep_mean = 600\n\n[transparency]\nlog_vkey = "{w.log.vkey()}"\n'
        f'witnesses = {witnesses}\nquorum = 2\ncheckpoint = "{w.site}"\n'
        f'state_dir = "{w.host_state}"\n'
    )


def test_the_guard_reports_an_unwitnessed_exception_until_it_is_witnessed(
    world: World, tmp_path: Path
) -> None:
    seq = world.request()
    world.approve(seq)
    world.publish()
    out = io.StringIO()
    guard = in_process_guard(parse_config(guard_config(world, tmp_path), tmp_path / "g.toml"), out)
    try:
        posture = [guard.surfaces["posture"]]
        found = [f for f in guard.collect(posture, "sweep") if f.surface == "transparency"]
        assert [f.technique for f in found] == ["exception-not-witnessed"]
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        logged = [e["finding"] for e in events if e.get("event") == "finding"]
        mine = [f["technique"] for f in logged if f["surface"] == "transparency"]
        assert mine == ["exception-not-witnessed"]  # to the sinks, like any finding
        world.collect(*world.witnesses[:2])
        again = guard.collect(posture, "sweep")
        assert not [f for f in again if f.surface == "transparency"]
    finally:
        guard.kernel.close()
