"""Findings against the exceptions in force: a hook that matches an approved manifest exactly
is `allowed (exception #N)` — shown, not hidden; one that differs keeps its findings and gets
one more that says what differed. An expired or revoked exception covers nothing."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path

from patchguard.engine.findings import Disposition, Finding, Severity
from patchguard.engine.scan import Policy
from patchguard.kernel.errors import oserror_reason
from patchguard.policy.manifest import DeclaredBpfProgram
from patchguard.policy.rules import Request
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.ebpf import NAME as EBPF
from patchguard.surfaces.ebpf import BpfProgram


def exe_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _targets(prog: BpfProgram) -> set[str]:
    found = {a.target for a in prog.attachments if a.target}
    return found | ({prog.attach_btf} if prog.attach_btf else set())


def differences(prog: BpfProgram, declared: DeclaredBpfProgram) -> list[str]:
    """What of the program's declared attributes it does not have exactly; [] is a match."""
    out: list[str] = []
    if prog.prog_type != declared.prog_type:
        out.append(f"prog_type {prog.prog_type}, declared {declared.prog_type}")
    if _targets(prog) != set(declared.attach):
        out.append(f"attached to {sorted(_targets(prog))}, declared {sorted(declared.attach)}")
    extra = sorted(set(prog.helpers) - set(declared.helpers))
    missing = sorted(set(declared.helpers) - set(prog.helpers))
    if extra:
        out.append(f"calls helpers not declared: {', '.join(extra)}")
    if missing:
        out.append(f"does not call declared helpers: {', '.join(missing)}")
    if set(prog.kfuncs) != set(declared.kfuncs):
        out.append(f"kfuncs {sorted(prog.kfuncs)}, declared {sorted(declared.kfuncs)}")
    loaders = [o for o in prog.owners if o.exe]
    if not loaders:
        out.append("no loader process to check against the declared loader")
    for owner in loaders:
        if owner.exe != declared.loader.path:
            out.append(f"loaded by {owner.exe} (pid {owner.pid}), declared {declared.loader.path}")
        elif exe_sha256(f"/proc/{owner.pid}/exe") != declared.loader.sha256:
            out.append(f"loader {owner.exe} (pid {owner.pid}) has another sha256 than declared")
    return out


def in_scope(request: Request, host: str) -> bool:
    return request.scope is None or any(fnmatch(host, s) for s in request.scope)


def apply_exceptions(
    findings: Sequence[Finding],
    records: Sequence[object],
    exceptions: Sequence[Request],
    host: str | None = None,
) -> list[Finding]:
    """The findings with the ones that a live exception covers marked allowed, plus an
    `exception-mismatch` finding for each program whose name an exception declares but whose
    hook differs from the declaration."""
    host = host or platform.node()
    live = [r for r in exceptions if in_scope(r, host)]
    programs = {r.prog_id: r for r in records if isinstance(r, BpfProgram)}
    allowed: dict[int, Request] = {}
    out: list[Finding] = []
    for prog in programs.values():
        declared = [(r, d) for r in live for d in r.manifest.bpf_programs if d.name == prog.name]
        for request, decl in declared:
            diff = differences(prog, decl)
            if not diff:
                allowed[prog.prog_id] = request
                break
        else:
            for request, decl in declared:
                out.append(_mismatch(prog, request, differences(prog, decl)))
    for finding in findings:
        prog_id = finding.evidence.get("prog_id")
        covering = allowed.get(prog_id) if isinstance(prog_id, int) else None
        if covering is not None and finding.surface == EBPF:
            finding = replace(
                finding,
                disposition=Disposition.ALLOWED,
                summary=f"allowed by exception #{covering.id} ({covering.vendor}, until "
                f"{covering.expires}): {finding.summary}",
                evidence={**finding.evidence, "exception": covering.id},
            )
        out.append(finding)
    return out


def _mismatch(prog: BpfProgram, request: Request, diff: list[str]) -> Finding:
    return Finding(
        EBPF,
        "exception-mismatch",
        Severity.HIGH,
        f"prog {prog.prog_id} ({prog.name}, {prog.prog_type})",
        f"exception #{request.id} ({request.vendor}) declares a program named {prog.name}, but "
        f"this one differs: {'; '.join(diff)}",
        Disposition.SUSPICIOUS,
        "T1014",
        {"prog_id": prog.prog_id, "exception": request.id, "differences": diff},
    )


def ledger_policy(path: Path) -> tuple[Policy | None, str | None]:
    """The policy of the exceptions in force in the ledger at `path`, or (None, why not): no
    ledger, or one that does not verify (which grants nothing)."""
    from patchguard.policy.exceptions import live_exceptions
    from patchguard.policy.ledger import LedgerError
    from patchguard.policy.match_hooks import apply_hook_exceptions
    from patchguard.surfaces.modules import SURFACE as MODULES
    from patchguard.surfaces.tracing import SURFACE as TRACING

    try:
        path.stat()
    except FileNotFoundError:
        return None, None
    except OSError as exc:  # not root: /var/lib/patchguard is 0700
        return None, f"cannot read the exception ledger {path}: {oserror_reason(exc)}"
    try:
        live = live_exceptions(path)
    except LedgerError as exc:
        return None, f"the exception ledger grants nothing: {exc}"

    def policy(findings: list[Finding], state: SurfaceState) -> list[Finding]:
        if state.surface == EBPF:
            return apply_exceptions(findings, state.records, live)
        if state.surface in (TRACING, MODULES):
            return apply_hook_exceptions(findings, live)
        return findings

    return policy, None
