"""Tracing hooks: ftrace callbacks (enabled_functions), kprobes (kprobes/list) and dynamic trace
events (kprobe_events, uprobe_events, dynamic_events).

These are the "debug routines" of PatchGuard's list, in Linux terms. ftrace with IPMODIFY is how
modern loadable rootkits replace kernel functions without touching their code; a kprobe or a
direct ftrace call on a credential or syscall function does the same at one site. The same
interfaces are used by livepatch, BPF, perf and security agents, so each hook becomes a finding
that names the function, its owner and why it matters, and the exception ledger says which are
sanctioned.

Formats follow the kernel's own printers: t_show() and add_trampoline_func() in
kernel/trace/ftrace.c, report_probe() in kernel/kprobes.c, trace_kprobe_show(),
trace_uprobe_show() and trace_fprobe_show() in kernel/trace/.
"""

from __future__ import annotations

from patchguard.surfaces.tracing.assess import assess_records
from patchguard.surfaces.tracing.parse import (
    parse_dynamic_events,
    parse_enabled_functions,
    parse_kprobe_list,
)
from patchguard.surfaces.tracing.paths import NAME, NO_KPROBES
from patchguard.surfaces.tracing.records import (
    DynamicEvent,
    FtraceCallback,
    FtraceHook,
    Kprobe,
    TracingRecords,
)
from patchguard.surfaces.tracing.sensitive import (
    sensitive_category,
    symbol_module,
    symbol_name,
)
from patchguard.surfaces.tracing.surface import TracingSurface

__all__ = [
    "NAME",
    "NO_KPROBES",
    "DynamicEvent",
    "FtraceCallback",
    "FtraceHook",
    "Kprobe",
    "TracingRecords",
    "TracingSurface",
    "assess_records",
    "parse_dynamic_events",
    "parse_enabled_functions",
    "parse_kprobe_list",
    "sensitive_category",
    "symbol_module",
    "symbol_name",
]
