"""Findings from the netfilter records alone: hooks in no module's code, BPF hooks nothing
visible keeps, views that disagree."""

from __future__ import annotations

from collections.abc import Sequence

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.surfaces.netfilter.paths import NAME, ROOTKIT
from patchguard.surfaces.netfilter.records import BpfNetfilterHook, NetfilterHook, NetfilterRecords

# --- assess -------------------------------------------------------------------------------------


def _hidden(hook: NetfilterHook, modules: Sequence[str] | None) -> tuple[Severity, str] | None:
    """Why a hook's code belongs to nothing visible, or None."""
    if hook.unresolved:
        return Severity.CRITICAL, (
            f"runs code at {hook.function}, which no kernel or module symbol covers: the code "
            "of a module that took itself off the lists, or of memory injected into the kernel"
        )
    if hook.module and modules is not None and hook.module not in modules:
        return Severity.HIGH, (
            f"runs {hook.function} of module {hook.module}, which /proc/modules does not list: "
            "a module that hid itself after hooking"
        )
    return None


def _hook_subject(family: str, hook: str, priority: int, what: str) -> str:
    return f"netfilter {family} {hook} priority {priority}: {what}"


def _hook_evidence(hook: NetfilterHook) -> Evidence:
    return {
        "family": hook.family,
        "hooknum": hook.hooknum,
        "hook": hook.hook,
        "priority": hook.priority,
        "function": hook.function,
        "module": hook.module,
        "hook_type": hook.hook_type,
        "device": hook.device,
        "table": hook.table,
        "chain": hook.chain,
        "prog_id": hook.prog_id,
    }


def assess_hook(hook: NetfilterHook, modules: Sequence[str] | None) -> list[Finding]:
    hidden = _hidden(hook, modules)
    if hidden is None:
        return []
    severity, why = hidden
    return [
        Finding(
            NAME,
            "hidden-netfilter-hook",
            severity,
            _hook_subject(hook.family, hook.hook, hook.priority, hook.function or "?"),
            f"A netfilter hook on {hook.family} {hook.hook} {why}.",
            Disposition.TAMPERING,
            ROOTKIT,
            _hook_evidence(hook),
        )
    ]


def _bpf_evidence(hook: BpfNetfilterHook) -> Evidence:
    return {
        "link_id": hook.link_id,
        "prog_id": hook.prog_id,
        "name": hook.prog_name,
        "family": hook.family,
        "hooknum": hook.hooknum,
        "hook": hook.hook,
        "priority": hook.priority,
        "owners": [f"{o.pid} {o.exe or o.comm}" for o in hook.owners],
        "pins": list(hook.pins),
    }


def assess_bpf_hook(hook: BpfNetfilterHook) -> list[Finding]:
    prog = f"BPF prog {hook.prog_id} ({hook.prog_name or 'unnamed'}), link {hook.link_id}"
    subject = _hook_subject(hook.family, hook.hook, hook.priority, prog)
    kept_by = [f"pid {o.pid} {o.exe or o.comm}" for o in hook.owners]
    kept_by += [f"pin {pin}" for pin in hook.pins]
    if kept_by:  # a firewall or traffic tool: named, not judged
        return [
            Finding(
                NAME,
                "netfilter-bpf-hook",
                Severity.INFO,
                subject,
                f"{prog} sees every {hook.family} packet at the {hook.hook} hook; kept by "
                f"{', '.join(kept_by)}.",
                Disposition.EXPLAINED,
                None,
                _bpf_evidence(hook),
            )
        ]
    return [
        Finding(
            NAME,
            "unowned-netfilter-bpf",
            Severity.HIGH,
            subject,
            f"{prog} sees every {hook.family} packet at the {hook.hook} hook, yet no visible "
            "process holds its link and no pin keeps it: a link dies with its last fd or pin, "
            "so its holder is hidden (a packet trigger is how backdoors wait unseen).",
            Disposition.SUSPICIOUS,
            ROOTKIT,
            _bpf_evidence(hook),
        )
    ]


def assess_views(
    hooks: Sequence[NetfilterHook], links: Sequence[BpfNetfilterHook]
) -> list[Finding]:
    """A BPF program in the hook lists that no BPF netfilter link names (links were read)."""
    linked = {link.prog_id for link in links}
    return [
        Finding(
            NAME,
            "netfilter-hook-view-mismatch",
            Severity.MEDIUM,
            _hook_subject(h.family, h.hook, h.priority, f"BPF prog {h.prog_id}"),
            f"The {h.family} {h.hook} hook list runs BPF prog {h.prog_id}, but no BPF netfilter "
            "link names it: the link list is being hidden, or the hook changed while we read.",
            Disposition.SUSPICIOUS,
            ROOTKIT,
            _hook_evidence(h),
        )
        for h in hooks
        if h.hook_type == "bpf" and h.prog_id is not None and h.prog_id not in linked
    ]


def assess_records(records: NetfilterRecords) -> list[Finding]:
    views = records.views
    modules = views.modules if views is not None else None
    found = [f for h in records.hooks for f in assess_hook(h, modules)]
    found += [f for link in records.links for f in assess_bpf_hook(link)]
    if views is not None and views.bpf_links_read:
        found += assess_views(records.hooks, records.links)
    return found
