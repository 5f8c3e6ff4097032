"""Exceptions for the hooks that are not eBPF programs: ftrace callbacks, kprobes, livepatches
and modules. As for programs (policy/match.py), a finding an exception in force covers is
`allowed (exception #N)`, shown, not hidden; a hook on a declared function or module that
differs from its declaration keeps its findings and gets an `exception-mismatch` that says
what differed.

The evidence of the tracing and modules findings is what is compared, exactly:
- ftrace: the hooked function, and every callback on it (symbol and module, from
  enabled_functions' %pS): one undeclared callback and nothing on that function is covered;
- kprobe: function, offset, kind and module of the probe point (kprobes/list does not say
  which module registered a probe, so the declaration is of the probe point);
- livepatch: the patch name and each function it replaces;
- module: the name, the taint letters it shows (each must be declared), and, unless it is
  declared unsigned (taint E), the signer of its signature as `modinfo -F signer` reads it
  from the module file; a module that tainted the kernel with E was loaded without a valid
  signature, whatever its file says.
- the kernel's own module taint flags (posture's `taint E`, `taint O`...): the sanctioned
  module's while every loaded module that shows the letter is covered by an exception that
  declares it; a letter that no loaded module shows (set by one since unloaded, or by
  something else) stays a finding.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace

from patchguard.findings import Disposition, Finding, Severity
from patchguard.policy.manifest import (
    DeclaredFtrace,
    DeclaredKprobe,
    DeclaredLivepatch,
    DeclaredModule,
    Manifest,
)
from patchguard.policy.rules import Request
from patchguard.surfaces.tracing import symbol_module, symbol_name
from patchguard.surfaces.tracing.records import DirectCall

FTRACE_TECHNIQUES = frozenset(
    {"ftrace-ipmodify", "ftrace-hook-sensitive-function", "ftrace-direct-unaccounted"}
)
KPROBE_TECHNIQUES = frozenset({"kprobe-sensitive-function"})
LIVEPATCH_TECHNIQUES = frozenset({"livepatch"})
MODULE_TECHNIQUES = frozenset(
    {"out-of-tree-module", "unsigned-module", "proprietary-module", "tainted-module",
     "livepatch-module", "staging-module", "auxiliary-taint-module"}
)  # fmt: skip
Signer = Callable[[str], str | None]


def modinfo_signer(module: str) -> str | None:
    """The signer of the module file `modinfo` finds for this name ("" unsigned); None when
    modinfo is missing or finds no file."""
    try:
        done = subprocess.run(
            ["modinfo", "-F", "signer", module],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ftrace_differences(finding: Finding, declared: DeclaredFtrace) -> list[str]:
    """What of the hook's callbacks the declaration does not name. The direct-call ops'
    callback is not compared: what its call reaches is (policy/match_direct.py)."""
    from patchguard.policy.match_direct import direct_handlers

    direct, callbacks = direct_handlers(finding)
    if direct and not callbacks:
        return [f"{declared.owner} is no owner to declare: a direct call is sanctioned by the "
                "[[bpf_program]] entries of what it reaches"]  # fmt: skip
    if not callbacks:
        return ["enabled_functions names no callback to compare"]
    return [
        f"callback {cb} is not the declared {declared.owner}"
        + (f" [{declared.module}]" if declared.module else "")
        for cb in callbacks
        if symbol_name(cb) != declared.owner or symbol_module(cb) != declared.module
    ]


def kprobe_differences(finding: Finding, declared: DeclaredKprobe) -> list[str]:
    ev = finding.evidence
    seen = {"offset": ev.get("offset"), "kind": ev.get("kind"), "module": ev.get("module")}
    wanted = {"offset": declared.offset, "kind": declared.kind, "module": declared.module}
    return [
        f"{key} {seen[key]}, declared {wanted[key]}" for key in seen if seen[key] != wanted[key]
    ]


def livepatch_differences(finding: Finding, declared: DeclaredLivepatch) -> list[str]:
    function = finding.evidence.get("function")
    if function in declared.functions:
        return []
    return [f"replaces {function}, which {declared.name} does not declare"]


def module_differences(
    finding: Finding, declared: DeclaredModule, signer: Signer, taints: dict[str, set[str]]
) -> list[str]:
    name, shown = declared.name, taints.get(declared.name, set())
    if declared.taints:  # each letter it shows must be declared; E is then declared unsigned
        undeclared = "".join(sorted(shown - set(declared.taints)))
        if undeclared:
            return [f"tainted the kernel with {undeclared}, declared {declared.taints}"]
        if "E" in shown:
            return []
    elif "E" in shown:
        return [f"loaded without a valid signature (taint E), declared signer {declared.signer}"]
    if declared.signer is None:
        return []
    found = signer(name)
    if found is None:
        return [f"no module file for {name} to read its signer from (modinfo)"]
    if found != declared.signer:
        return [f"signed by {found or 'nobody'}, declared {declared.signer}"]
    return []


def _declared(manifest: Manifest, finding: Finding) -> Sequence[object]:
    """The declarations of `manifest` about the subject of `finding`."""
    ev, technique = finding.evidence, finding.technique
    if technique in FTRACE_TECHNIQUES:
        return [d for d in manifest.ftrace if d.function == ev.get("function")]
    if technique in KPROBE_TECHNIQUES:
        return [d for d in manifest.kprobes if d.symbol == ev.get("function")]
    if technique in LIVEPATCH_TECHNIQUES:
        return [d for d in manifest.livepatches if d.name == ev.get("patch")]
    if technique in MODULE_TECHNIQUES:
        return [d for d in manifest.modules if d.name == ev.get("module")]
    return []


def _taints(findings: Sequence[Finding]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in findings:
        module, taint = f.evidence.get("module"), f.evidence.get("taint")
        if f.technique in MODULE_TECHNIQUES and isinstance(module, str) and isinstance(taint, str):
            found.setdefault(module, set()).add(taint)
    return found


Verdict = tuple[Request | None, list[tuple[Request, list[str]]]]


def apply_hook_exceptions(
    findings: Sequence[Finding],
    live: Sequence[Request],
    signer: Signer = modinfo_signer,
    direct: Sequence[DirectCall] = (),
) -> list[Finding]:
    """`findings` of the tracing and modules surfaces with those an exception in force covers
    allowed, and an `exception-mismatch` after each one whose declaration it differs from.
    `direct`: what each direct ftrace call reaches, read from memory (the tracing records)."""
    taints = _taints(findings)
    signers: dict[str, str | None] = {}

    def cached_signer(name: str) -> str | None:
        if name not in signers:
            signers[name] = signer(name)
        return signers[name]

    out: list[Finding] = []
    said: set[tuple[int, str]] = set()  # one mismatch per exception and subject
    for finding in findings:
        covering, mismatches = _verdict(finding, live, cached_signer, taints, direct)
        if covering is not None:
            out.append(allowed_by(finding, covering))
            continue
        out.append(finding)
        for request, diff in mismatches:
            if (request.id, finding.subject) not in said:
                said.add((request.id, finding.subject))
                out.append(_mismatch(finding, request, diff))
    return out


def _verdict(
    finding: Finding,
    live: Sequence[Request],
    signer: Signer,
    taints: dict[str, set[str]],
    calls: Sequence[DirectCall],
) -> Verdict:
    """The exception covering the finding, or the mismatches of those declaring its subject. A
    hook with ftrace's direct-call ops on it is covered only where what the call reaches is
    (policy/match_direct.py), and any other callback on it by an [[ftrace]] declaration."""
    if finding.technique not in FTRACE_TECHNIQUES:
        return _declared_verdict(finding, live, signer, taints)
    from patchguard.policy.match_direct import direct_handlers, direct_verdict, the_call

    direct, others = direct_handlers(finding)
    if not direct:
        return _declared_verdict(finding, live, signer, taints)
    by_programs, mismatches = direct_verdict(the_call(finding, calls), live)
    if not others:
        return by_programs, mismatches
    by_ftrace, more = _declared_verdict(finding, live, signer, taints)
    if by_programs is None or by_ftrace is None:
        return None, mismatches + more
    return by_ftrace, []


def _declared_verdict(
    finding: Finding, live: Sequence[Request], signer: Signer, taints: dict[str, set[str]]
) -> Verdict:
    """The first exception with a declaration the finding matches exactly, or None and the
    differences of each declaration of its subject."""
    mismatches: list[tuple[Request, list[str]]] = []
    for request in live:
        for declared in _declared(request.manifest, finding):
            diff = _differences(finding, declared, signer, taints)
            if not diff:
                return request, []
            mismatches.append((request, diff))
    return None, mismatches


def _differences(
    finding: Finding, declared: object, signer: Signer, taints: dict[str, set[str]]
) -> list[str]:
    if isinstance(declared, DeclaredFtrace):
        return ftrace_differences(finding, declared)
    if isinstance(declared, DeclaredKprobe):
        return kprobe_differences(finding, declared)
    if isinstance(declared, DeclaredLivepatch):
        return livepatch_differences(finding, declared)
    assert isinstance(declared, DeclaredModule)
    return module_differences(finding, declared, signer, taints)


def allowed_by(finding: Finding, request: Request) -> Finding:
    """`finding` marked allowed by the exception `request`: shown, with its number."""
    return replace(
        finding,
        disposition=Disposition.ALLOWED,
        summary=f"allowed by exception #{request.id} ({request.vendor}, until "
        f"{request.expires}): {finding.summary}",
        evidence={**finding.evidence, "exception": request.id},
    )


def _mismatch(finding: Finding, request: Request, diff: list[str]) -> Finding:
    return Finding(
        finding.surface,
        "exception-mismatch",
        Severity.HIGH,
        finding.subject,
        f"exception #{request.id} ({request.vendor}) declares {finding.subject}, but it differs: "
        f"{'; '.join(diff)}",
        Disposition.SUSPICIOUS,
        "T1014",
        {"exception": request.id, "differences": diff, "technique": finding.technique},
    )
