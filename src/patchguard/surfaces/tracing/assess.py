"""Findings from the tracing records alone: IPMODIFY and direct ftrace hooks, hooks and probes on
sensitive functions, hidden kprobe handlers, livepatches and dynamic events."""

from __future__ import annotations

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.kernel.livepatch import Livepatched
from patchguard.surfaces.base import finding
from patchguard.surfaces.ebpf.assess import visible
from patchguard.surfaces.tracing.paths import GLOBAL_TRACER_FUNCTIONS, NAME, ROOTKIT
from patchguard.surfaces.tracing.records import (
    DirectCall,
    DynamicEvent,
    FtraceHook,
    Kprobe,
    TracingRecords,
)
from patchguard.surfaces.tracing.sensitive import (
    KLP_HANDLER,
    KPROBE_HANDLER,
    ROOTKIT_ONLY,
    sensitive_category,
    symbol_name,
)

# --- assess -------------------------------------------------------------------------------------


HookEvidence = dict[str, str | int | bool | list[str] | list[int] | None]


def _hook_evidence(hook: FtraceHook, call: DirectCall | None = None) -> HookEvidence:
    return {
        "function": hook.function,
        "module": hook.module,
        "flags": hook.flags,
        "refcount": hook.refcount,
        "owners": list(hook.owners),
        "trampolines": [cb.address for cb in hook.callbacks if cb.via == "tramp"],
        "direct": hook.direct,
        **(_direct_evidence(call) if call is not None else {}),
    }


def _direct_evidence(call: DirectCall) -> HookEvidence:
    """What the direct call reaches, read from memory: the owner a [[bpf_program]] entry
    sanctions (policy/match_direct.py)."""
    return {
        "direct_target": f"{call.target:#x}",
        "direct_reaches": visible(call.target_name),
        "direct_trampoline": visible(call.trampoline) if call.trampoline else None,
        "direct_known": call.known,
        "direct_prog_ids": call.prog_ids,
        "direct_programs": [p.said for p in call.programs],
    }


def _subject(function: str, module: str | None) -> str:
    return f"{function} [{module}]" if module else function


def _bpf_trampoline(target: str | None) -> bool:
    # BPF trampolines are named bpf_trampoline_<key> in kallsyms (module "bpf"); the BPF link
    # that owns one is listed by the ebpf surface.
    return target is not None and symbol_name(target).startswith("bpf_trampoline_")


def _kprobe_site(hook: FtraceHook, probed: set[str]) -> bool:
    """The hook is the ftrace site of a kprobe that kprobes/list shows (and is assessed there).

    A kprobe handler on a function kprobes/list does not show stays a finding here.
    """
    owners = {symbol_name(owner) for owner in hook.owners}
    return owners == {KPROBE_HANDLER} and hook.function in probed


def _ipmodify(hook: FtraceHook, call: DirectCall | None) -> Finding:
    owners = ", ".join(hook.owners) or "an unnamed ops"
    return finding(
        NAME,
        "ftrace-ipmodify",
        _subject(hook.function, hook.module),
        f"An ftrace callback ({owners}) may change where {hook.function} returns to "
        "(IPMODIFY): the way loadable rootkits replace kernel functions; livepatch does it too.",
        {**_hook_evidence(hook, call), "category": sensitive_category(hook.function)},
    )


def _direct_unaccounted(hook: FtraceHook, call: DirectCall | None) -> Finding:
    target = hook.direct or "a target ftrace could not name"
    if call is not None:  # named from memory: by bounds, and by the trampoline's programs
        target = call.said
    return finding(
        NAME,
        "ftrace-direct-unaccounted",
        _subject(hook.function, hook.module),
        f"{hook.function} calls {target} directly from its ftrace site, and no BPF trampoline "
        "that bpf(2) and the kernel's BPF symbols know accounts for it.",
        _hook_evidence(hook, call),
    )


def _unaccounted(hook: FtraceHook, call: DirectCall | None) -> bool:
    """A direct call that no known BPF trampoline accounts for: read from memory where it
    could be (its code and programs), else by the name enabled_functions prints."""
    if not hook.direct_call:
        return False
    return not call.known if call is not None else not _bpf_trampoline(hook.direct)


def _sensitive_hook(hook: FtraceHook, category: str, call: DirectCall | None) -> Finding:
    kprobe_owned = {symbol_name(o) for o in hook.owners} == {KPROBE_HANDLER}
    unlisted = " (a kprobe handler, yet kprobes/list shows no kprobe there)" if kprobe_owned else ""
    return finding(
        NAME,
        "ftrace-hook-sensitive-function",
        _subject(hook.function, hook.module),
        f"ftrace hooks {hook.function} ({category}){unlisted}: a callback sees or changes every "
        "call, the place rootkits hook to hide and to raise privileges.",
        {**_hook_evidence(hook, call), "category": category},
        severity=Severity.HIGH if category in ROOTKIT_ONLY else Severity.MEDIUM,
    )


def _livepatch(hook: FtraceHook, patch: Livepatched) -> Finding:
    return Finding(
        NAME,
        "livepatch",
        Severity.INFO,
        _subject(hook.function, hook.module),
        f"{hook.function} is replaced by {patch}: the kernel's own live patching, "
        "through ftrace with IPMODIFY",
        Disposition.EXPLAINED,
        None,
        {**_hook_evidence(hook), "livepatch": str(patch), "patch": patch.patch},
    )


def _assess_hook(
    hook: FtraceHook,
    per_function: bool,
    probed: set[str],
    patched: dict[str, Livepatched],
    call: DirectCall | None = None,
) -> list[Finding]:
    patch = patched.get(hook.function)
    if patch is not None and {symbol_name(o) for o in hook.owners} == {KLP_HANDLER}:
        return [_livepatch(hook, patch)]
    found = [_ipmodify(hook, call)] if hook.ipmodify else []
    if _unaccounted(hook, call):
        found.append(_direct_unaccounted(hook, call))
    category = sensitive_category(hook.function)
    # IPMODIFY already says more; a kprobe's own site is assessed with the kprobe.
    if category and not hook.ipmodify and per_function and not _kprobe_site(hook, probed):
        found.append(_sensitive_hook(hook, category, call))
    return found


def _assess_ftrace(
    hooks: list[FtraceHook],
    probed: set[str],
    patched: dict[str, Livepatched],
    calls: tuple[DirectCall, ...] = (),
) -> list[Finding]:
    per_function = len(hooks) <= GLOBAL_TRACER_FUNCTIONS
    by_function = {(c.function, c.module): c for c in calls}
    found = [
        f
        for hook in hooks
        for f in _assess_hook(
            hook, per_function, probed, patched, by_function.get((hook.function, hook.module))
        )
    ]
    if not per_function:
        found.append(
            finding(
                NAME,
                "ftrace-global-tracer",
                f"{len(hooks)} functions",
                f"ftrace hooks {len(hooks)} functions at once: a whole-kernel tracer "
                "(current_tracer) is running; sensitive functions are not listed one by one.",
                {"functions": len(hooks)},
            )
        )
    return found


def _kprobe_evidence(probe: Kprobe) -> dict[str, str | int | bool | list[str] | None]:
    return {
        "function": probe.symbol,
        "offset": probe.offset,
        "module": probe.module,
        "handler": probe.handler,
        "handler_module": probe.handler_module,
        "kind": probe.probe_type,
        "flags": list(probe.flags),
        "address": f"{probe.address:#x}" if probe.address else None,
    }


def _registered_by(probe: Kprobe) -> str:
    if probe.handler is None:
        return ""
    return f", registered by {_subject(probe.handler, probe.handler_module)},"


def _hidden_handler(probe: Kprobe) -> Finding:
    return Finding(
        NAME,
        "kprobe-hidden-handler",
        Severity.CRITICAL,
        _subject(probe.target, probe.module),
        f"The {probe.probe_type} on {probe.target} runs code at {probe.handler}, which no "
        "kernel or listed module symbol covers: a module that took itself off the lists.",
        Disposition.TAMPERING,
        ROOTKIT,
        _kprobe_evidence(probe),
    )


def _assess_kprobe(probe: Kprobe) -> list[Finding]:
    found = [_hidden_handler(probe)] if (probe.handler or "").startswith("0x") else []
    category = sensitive_category(probe.symbol) if probe.symbol else None
    if category is None:
        return found
    severity = Severity.HIGH if category in ROOTKIT_ONLY else Severity.MEDIUM
    if probe.active:
        state = "active: its handler runs on every call"
    else:
        off = ", ".join(f for f in probe.flags if f in ("GONE", "DISABLED"))
        state = f"registered but not armed ({off}): its handler runs once it is enabled"
    found.append(
        finding(
            NAME,
            "kprobe-sensitive-function",
            _subject(probe.target, probe.module),
            f"A {probe.probe_type} on {probe.symbol} ({category}){_registered_by(probe)} is "
            f"{state}; these functions are where rootkits hook to hide and to raise privileges.",
            {**_kprobe_evidence(probe), "category": category},
            severity=severity if probe.active else Severity.LOW,
        )
    )
    return found


def _assess_event(event: DynamicEvent) -> list[Finding]:
    evidence: Evidence = {
        "kind": event.event_type,
        "group": event.group,
        "event": event.event,
        "target": event.target,
        "line": event.line,
    }
    if event.site is not None and event.secret is not None:
        site, hit = event.site, event.secret
        return [
            finding(
                NAME,
                hit.technique,
                f"{event.group}/{event.event}",
                visible(
                    f"A tracefs {hit.summary(event.event_type, site)[2:]}, in every process "
                    "that runs it."
                ),
                {
                    **evidence,
                    "target": site.spelled,
                    "probed_file": site.path,
                    "symbol": site.symbol or "unknown",
                    "build_id": site.build_id or "unknown",
                    "reads": hit.reads,
                },
                severity=hit.severity,
                attack_id=hit.attack_id,
            )
        ]
    if event.site is not None:
        evidence = {**evidence, "target": event.site.spelled}
    return [
        finding(
            NAME,
            f"dynamic-{event.event_type}-event",
            f"{event.group}/{event.event}",
            f"A {event.event_type} trace event is defined on "
            f"{evidence['target'] or 'an unnamed target'}.",
            evidence,
            severity=Severity.INFO,
            attack_id=None,
        )
    ]


def assess_records(records: TracingRecords) -> list[Finding]:
    probed = {p.symbol for p in records.kprobes if p.symbol and "FTRACE" in p.flags}
    patched = {p.function: p for p in records.livepatched}
    found = _assess_ftrace(list(records.ftrace_hooks), probed, patched, records.direct_calls)
    found += [f for probe in records.kprobes for f in _assess_kprobe(probe)]
    found += [f for event in records.events for f in _assess_event(event)]
    return found
