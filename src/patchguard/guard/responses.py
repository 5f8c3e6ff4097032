"""What the guard does about a finding, per severity: log, alert, contain, bugcheck."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from patchguard.atomic import write_atomic
from patchguard.findings import Finding
from patchguard.kernel.bpf import syscall as bpf
from patchguard.surfaces.ebpf import BpfProgram

SYSRQ = Path("/proc/sysrq-trigger")


@dataclass(frozen=True)
class Containment:
    done: list[str]
    not_done: list[str]  # each says why


def contain(finding: Finding, records: Sequence[object]) -> Containment:
    """Detach what can be detached from outside its owner: the BPF links of the program the
    finding is about. A program attached through a perf event or held by a process has no link
    to detach; say so rather than pretend."""
    prog_id = finding.evidence.get("prog_id")
    if finding.surface != "ebpf" or not isinstance(prog_id, int):
        return Containment(
            [],
            [
                f"{finding.subject}: no automatic containment for "
                f"{finding.surface}/{finding.technique}"
            ],
        )
    prog = next((r for r in records if isinstance(r, BpfProgram) and r.prog_id == prog_id), None)
    if prog is None:
        return Containment([], [f"prog {prog_id}: gone before it could be contained"])
    done, not_done = [], []
    for attachment in prog.attachments:
        if attachment.via == "link" and attachment.link_id is not None:
            try:
                fd = bpf.fd_by_id(
                    bpf.BPF_LINK_GET_FD_BY_ID, attachment.link_id, "LINK_GET_FD_BY_ID"
                )
                try:
                    bpf.link_detach(fd)
                finally:
                    os.close(fd)
                done.append(
                    f"link {attachment.link_id} of prog {prog_id} detached ({attachment.target})"
                )
            except bpf.BpfError as exc:
                not_done.append(f"link {attachment.link_id} of prog {prog_id}: {exc}")
        else:
            holders = ", ".join(f"pid {o.pid} ({o.exe or o.comm})" for o in prog.owners)
            not_done.append(
                f"prog {prog_id} on {attachment.target}: attached through a perf "
                f"event, which only its holder can detach ({holders or 'no holder'})"
            )
    if not prog.attachments:
        not_done.append(f"prog {prog_id}: loaded but not attached; nothing to detach")
    return Containment(done, not_done)


def bugcheck(findings: Sequence[dict[str, object]], directory: Path, dry_run: bool) -> Path:
    """PatchGuard's answer: write the final report, flush it to disk, then panic the kernel
    through sysrq. With dry_run the report is written and nothing else happens."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = directory / "bugcheck-report.json"
    body = json.dumps({"findings": list(findings), "dry_run": dry_run}, indent=1)
    write_atomic(report, body.encode(), 0o600)
    os.sync()
    if not dry_run:
        with contextlib.suppress(OSError), open(SYSRQ, "w") as trigger:
            trigger.write("c")
    return report
