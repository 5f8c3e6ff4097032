"""The tracing surface on fixture text.

The 6.18 "fc" machine refuses enabled_functions (EPERM) and has no kprobes, so the fixtures
under tests/fixtures/handmade/tracing-hooked are HAND-WRITTEN, not captured. Their format was
taken from the kernel source read through the search tool: t_show() and add_trampoline_func()
in kernel/trace/ftrace.c (`func[ [mod]] (refs) R I D O M\\ttramp: %pS (%pS) ->%pS\\tops: %pS
(%pS)`, then `\\n\\tdirect-->%pS`), report_probe() in kernel/kprobes.c (`%px  %s  %s+0x%x  %s `
then `[GONE][DISABLED][OPTIMIZED][FTRACE]`), trace_kprobe_show(), trace_uprobe_show()
(`%c:%s/%s %s:0x%0*lx`) and trace_fprobe_show(). The lab (a stock Debian 6.1 guest) will capture
real ones. tests/fixtures/6.18-fc holds what this machine does give: empty dynamic_events and
uprobe_events, and a debugfs without kprobes.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from patchguard.findings import Severity
from patchguard.kernel import Kernel
from patchguard.kernel.errors import KernelAccessError, explain_errno
from patchguard.surfaces.base import Status
from patchguard.surfaces.ebpf import uprobes
from patchguard.surfaces.tracing import (
    NO_KPROBES,
    DynamicEvent,
    FtraceCallback,
    FtraceHook,
    Kprobe,
    TracingRecords,
    TracingSurface,
    assess_records,
    parse_dynamic_events,
    parse_enabled_functions,
    parse_kprobe_list,
    sensitive_category,
)

KPROBE_HANDLERS = "kprobe handlers (kprobe_table)"
FIXTURES = Path(__file__).parent.parent / "fixtures"
HOOKED = FIXTURES / "handmade/tracing-hooked"
FC = FIXTURES / "6.18-fc"
TRACING = "sys/kernel/tracing"
KP_TRAMP = FtraceCallback(
    "tramp",
    "ftrace_trampoline+0x0/0x14e [__builtin__ftrace]",
    "kprobe_ftrace_handler+0x0/0x1c0",
    "kprobe_ftrace_handler+0x0/0x1c0",
)


def read(rel: str) -> str:
    return (HOOKED / rel).read_text()


# --- enabled_functions --------------------------------------------------------------------------


def test_enabled_functions_fixture() -> None:
    hooks = {h.function: h for h in parse_enabled_functions(read(f"{TRACING}/enabled_functions"))}
    assert list(hooks) == [
        "schedule",
        "commit_creds",
        "vfs_read",
        "filldir64",
        "__x64_sys_getdents64",
        "do_unlinkat",
        "tcp4_seq_show",
        "e1000_xmit_frame",
    ]
    assert hooks["commit_creds"] == FtraceHook("commit_creds", None, 1, "R", (KP_TRAMP,))
    rootkit = hooks["__x64_sys_getdents64"]
    assert rootkit.flags == "RIM" and rootkit.ipmodify and not rootkit.direct_call
    assert rootkit.owners == ("fh_ftrace_thunk+0x0/0x40 [rkit]",)
    assert rootkit.callbacks[0].address == "0xffffffffc0a42000"
    # The continuation line belongs to the function above it, never a record of its own.
    assert hooks["do_unlinkat"].direct == "bpf_trampoline_6442475221+0x0/0xa9 [bpf]"
    assert hooks["do_unlinkat"].flags == "DM" and hooks["do_unlinkat"].callbacks == ()
    assert hooks["tcp4_seq_show"].direct == "0xffffffffc0b07000"
    module_hook = hooks["e1000_xmit_frame"]
    assert (module_hook.module, module_hook.flags) == ("e1000e", "")
    assert module_hook.calls == "ftrace_ops_list_func+0x0/0x1a0"


def test_enabled_functions_6_1_format_and_variants() -> None:
    # 6.1 prints only R I D; 6.3 added O with "\tops: %pS (%pS)"; 6.12 appends " {subops}".
    text = (
        "do_sys_openat2 (2) R I \ttramp: 0xffffffffc0201000 (fprobe_handler+0x0/0x30)"
        " ->fprobe_handler+0x0/0x30 {kprobe_ftrace_handler+0x0/0x1c0}\n"
        "schedule [mymod] (1)      O   \tops: my_ops+0x0/0xa0 [mymod] (my_func+0x0/0x10 [mymod])\n"
        "vfs_write (1) R       \ttramp: ERROR!\n"
        "not a line at all\n"
    )
    first, second, third = parse_enabled_functions(text)
    assert first.flags == "RI" and first.refcount == 2
    assert first.callbacks[0].calls == "fprobe_handler+0x0/0x30"
    assert second == FtraceHook(
        "schedule",
        "mymod",
        1,
        "O",
        (FtraceCallback("ops", "my_ops+0x0/0xa0 [mymod]", "my_func+0x0/0x10 [mymod]"),),
    )
    assert third.callbacks == (FtraceCallback("tramp", "ERROR!", None),)


# --- kprobes/list -------------------------------------------------------------------------------


def test_kprobe_list_fixture() -> None:
    probes = parse_kprobe_list(read("sys/kernel/debug/kprobes/list"))
    assert probes[0] == Kprobe(
        0xFFFFFFFF810D2A10, "kprobe", "commit_creds", 0, None, ("FTRACE",), "commit_creds+0x0"
    )
    assert probes[1].probe_type == "kretprobe" and probes[1].active
    assert probes[2].flags == ("DISABLED", "FTRACE") and not probes[2].active
    assert probes[3] == Kprobe(
        0xFFFFFFFFC0401010,
        "kprobe",
        "e1000_xmit_frame",
        0x10,
        "e1000e",
        ("OPTIMIZED",),
        "e1000_xmit_frame+0x10",
    )


def test_kprobe_list_hidden_and_unresolved_addresses() -> None:
    # kallsyms_show_value() false: the address prints as zeros; no symbol: "%pS" of the address.
    text = "0000000000000000  k  0xffffffffc0a01010 [GONE]\ngarbage\n"
    (probe,) = parse_kprobe_list(text)
    assert (probe.address, probe.symbol, probe.flags) == (None, None, ("GONE",))
    assert probe.target == "0xffffffffc0a01010"


# --- dynamic events -----------------------------------------------------------------------------


def test_dynamic_events_fixture() -> None:
    events = parse_dynamic_events(read(f"{TRACING}/dynamic_events"))
    kinds = [(e.event_type, e.group, e.event, e.target) for e in events]
    assert kinds == [
        ("kprobe", "kprobes", "cc", "commit_creds"),
        ("kretprobe", "kprobes", "vr", "vfs_read"),  # r16: maxactive before the colon
        (
            "uprobe",
            "uprobes",
            "pam_auth",
            "/usr/lib/x86_64-linux-gnu/libpam.so.0+0x7d30",
        ),
        ("uretprobe", "uprobes", "bash_rl", "/usr/bin/bash+0xad5c0"),
        ("fprobe", "fprobes", "vfs_open_entry", "vfs_open"),
    ]
    assert events[0].args == ("cred=%di:x64",)
    assert events[2].binary == "/usr/lib/x86_64-linux-gnu/libpam.so.0"
    assert events[0].binary is None


def test_dynamic_event_variants() -> None:
    text = (
        "p:uprobes/ref /usr/sbin/sshd:0x00000000000a1b20(0x3c) a=%ax\n"
        "f:fprobes/ret vfs_write%return\n"
        "e:eprobes/ep sched.sched_switch\n"
        "p:kprobes/addr 0xffffffff81234567\n"
        "mysynth\tu64 lat\n"
    )
    events = parse_dynamic_events(text)
    assert [e.event_type for e in events] == ["uprobe", "fexit", "eprobe", "kprobe", "other"]
    assert events[0].binary == "/usr/sbin/sshd"
    assert events[-1] == DynamicEvent("other", "synthetic", "mysynth", None, (), "mysynth\tu64 lat")


@pytest.mark.parametrize(
    ("function", "category"),
    [
        ("__x64_sys_kill", "syscall"),
        ("__x64_sys_getdents64", "directory-listing"),
        ("filldir64.cold", "directory-listing"),
        ("commit_creds", "credentials"),
        ("vfs_read", "file"),
        ("tcp4_seq_show", "network-listing"),
        ("security_file_open", "security"),
        ("m_show", "module-list"),
        ("kallsyms_lookup_name", "kallsyms"),
        ("schedule", None),
        ("e1000_xmit_frame", None),
    ],
)
def test_sensitive_category(function: str, category: str | None) -> None:
    assert sensitive_category(function) == category


@pytest.mark.parametrize(
    ("path", "function", "technique"),
    [
        ("/usr/sbin/sshd", None, "uprobe-credential-theft"),
        ("/usr/bin/sudo", "main", "uprobe-credential-theft"),
        ("/bin/su", None, "uprobe-credential-theft"),
        ("/usr/lib/x86_64-linux-gnu/libpam.so.0", "pam_get_authtok", "uprobe-credential-theft"),
        ("/lib/x86_64-linux-gnu/security/pam_unix.so", None, "uprobe-credential-theft"),
        ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "SSL_write", "uprobe-tls-intercept"),
        ("/usr/bin/bash", "readline", "uprobe-credential-theft"),
        ("/usr/bin/subversion", "main", None),
    ],
)
def test_secret_handling_files(path: str, function: str | None, technique: str | None) -> None:
    symbol = f"{function}+0x0" if function else None
    site = uprobes.ProbedSite(path, 0x10, symbol=symbol)
    hit = uprobes.secret_at(site, uprobes.shipped_secrets())
    assert (hit.technique if hit else None) == technique
    assert hit is None or hit.severity is Severity.HIGH


# --- the surface over fixture roots -------------------------------------------------------------


def test_surface_on_the_hooked_tree() -> None:
    surface = TracingSurface()
    state = surface.collect(Kernel(HOOKED))
    # what a captured tree cannot give: who registered each kprobe (kernel memory)
    no_memory = "kernel memory: a captured tree has no live kernel memory"
    assert [(g.what, g.reason) for g in state.gaps] == [
        (KPROBE_HANDLERS, no_memory),
        (FTRACE_OPS, no_memory),
        (TRACEPOINT_PROBES, no_memory),
    ]
    assert state.status is Status.PARTIAL
    assert state.counts == {
        "ftrace_functions": 8,
        "ipmodify": 1,
        "direct": 2,
        "kprobes": 4,
        "dynamic_events": 5,  # dynamic_events repeats kprobe_events and uprobe_events: once each
        "uprobes": 2,
        "files_read": 5,
        "ftrace_ops": 0,
        "tracepoint_probes": 0,
        "probed_tracepoints": 0,
    }
    found = {(f.technique, f.subject): f for f in surface.assess(state)}
    assert set(found) == {
        ("ftrace-ipmodify", "__x64_sys_getdents64"),
        ("ftrace-direct-unaccounted", "tcp4_seq_show"),
        ("ftrace-hook-sensitive-function", "tcp4_seq_show"),
        ("ftrace-hook-sensitive-function", "filldir64"),
        ("kprobe-sensitive-function", "commit_creds+0x0"),
        ("kprobe-sensitive-function", "vfs_read+0x0"),
        ("kprobe-sensitive-function", "kallsyms_lookup_name+0x0"),
        ("dynamic-kprobe-event", "kprobes/cc"),
        ("dynamic-kretprobe-event", "kprobes/vr"),
        ("uprobe-credential-theft", "uprobes/pam_auth"),
        # the fixture root has no bash to read symbols from: a probe that may be on readline
        # is reported as one
        ("uprobe-credential-theft", "uprobes/bash_rl"),
        ("dynamic-fprobe-event", "fprobes/vfs_open_entry"),
    }
    ipmodify = found[("ftrace-ipmodify", "__x64_sys_getdents64")]
    assert ipmodify.severity is Severity.HIGH and ipmodify.attack_id == "T1014"
    assert ipmodify.evidence["owners"] == ["fh_ftrace_thunk+0x0/0x40 [rkit]"]
    assert ipmodify.evidence["category"] == "directory-listing"
    assert found[("ftrace-direct-unaccounted", "tcp4_seq_show")].severity is Severity.MEDIUM
    # A kprobe handler on a function kprobes/list does not show is called out as such.
    assert (
        "kprobes/list shows no kprobe"
        in found[("ftrace-hook-sensitive-function", "filldir64")].summary
    )
    assert found[("kprobe-sensitive-function", "kallsyms_lookup_name+0x0")].severity is Severity.LOW
    pam = found[("uprobe-credential-theft", "uprobes/pam_auth")]
    assert pam.severity is Severity.HIGH
    assert pam.evidence["target"] == "/usr/lib/x86_64-linux-gnu/libpam.so.0+0x7d30"
    assert "passwords" in str(pam.evidence["reads"]) and pam.evidence["symbol"] == "unknown"
    assert found[("dynamic-kprobe-event", "kprobes/cc")].severity is Severity.INFO


def test_kprobe_sites_are_assessed_once() -> None:
    # commit_creds: a kprobe on its ftrace site is reported as the kprobe, not twice.
    hook = FtraceHook("commit_creds", None, 1, "R", (KP_TRAMP,))
    probe = Kprobe(0xFFFFFFFF810D2A10, "kprobe", "commit_creds", 0, None, ("FTRACE",))
    techniques = [f.technique for f in assess_records(TracingRecords.of([hook, probe]))]
    assert techniques == ["kprobe-sensitive-function"]
    # Without the kprobe record the same hook is a finding of its own.
    assert [f.technique for f in assess_records(TracingRecords.of([hook]))] == [
        "ftrace-hook-sensitive-function"
    ]


def test_a_whole_kernel_tracer_is_one_finding() -> None:
    hooks: list[object] = [FtraceHook(f"__x64_sys_n{i}", None, 1, "") for i in range(1001)]
    hooks.append(FtraceHook("tcp4_seq_show", None, 1, "RI"))
    found = assess_records(TracingRecords.of(hooks))
    assert sorted(f.technique for f in found) == ["ftrace-global-tracer", "ftrace-ipmodify"]


def test_bpf_trampoline_direct_calls_are_accounted() -> None:
    bpf = FtraceHook("do_unlinkat", None, 1, "DM", direct="bpf_trampoline_42+0x0/0xa9 [bpf]")
    unnamed = FtraceHook("do_unlinkat", None, 1, "DM", direct=None)
    assert assess_records(TracingRecords.of([bpf])) == []
    assert [f.technique for f in assess_records(TracingRecords.of([unnamed]))] == [
        "ftrace-direct-unaccounted"
    ]


def test_surface_on_the_fc_capture() -> None:
    state = TracingSurface().collect(Kernel(FC))
    gaps = {g.what: g.reason for g in state.gaps}
    # enabled_functions was refused on the machine, so the capture has none (ENOENT here).
    assert "ENOENT" in gaps["ftrace enabled_functions"]
    assert "does not build these events" in gaps["dynamic trace events (kprobe_events)"]
    assert gaps["kprobes (debugfs kprobes/list)"].startswith(NO_KPROBES)
    # dynamic_events and uprobe_events were read and are empty: partial, not unavailable.
    assert state.counts["files_read"] == 2 and state.counts["dynamic_events"] == 0
    assert state.status is Status.PARTIAL
    assert TracingSurface().assess(state) == []


FTRACE_OPS = "ftrace ops (ftrace_ops_list in kernel memory)"
TRACEPOINT_PROBES = "tracepoint probes (struct tracepoint.funcs in kernel memory)"


class RefusingKernel(Kernel):
    """A captured tree whose enabled_functions the kernel refuses, as the 6.18 machine does."""

    def read_text(self, kernel_path: str) -> str:
        if kernel_path.endswith("/enabled_functions"):
            raise KernelAccessError(kernel_path, explain_errno(errno.EPERM))
        return super().read_text(kernel_path)


def test_refused_enabled_functions_is_a_gap() -> None:
    state = TracingSurface().collect(RefusingKernel(HOOKED))
    gap, handlers, ops, probes = state.gaps
    assert handlers.what == KPROBE_HANDLERS and ops.what == FTRACE_OPS
    assert probes.what == TRACEPOINT_PROBES
    assert gap.what == "ftrace enabled_functions"
    assert gap.reason.endswith("operation not permitted by the kernel (EPERM)")
    assert state.counts["ftrace_functions"] == 0 and state.counts["kprobes"] == 4
    assert state.status is Status.PARTIAL


def test_nothing_mounted(tmp_path: Path) -> None:
    state = TracingSurface().collect(Kernel(tmp_path))
    assert [g.what for g in state.gaps] == [
        "ftrace enabled_functions and dynamic trace events (tracefs)",
        "kprobes (debugfs kprobes/list)",
        FTRACE_OPS,
        TRACEPOINT_PROBES,
    ]
    assert state.status is Status.UNAVAILABLE


def test_tracefs_inside_debugfs(tmp_path: Path) -> None:
    # Kernels and mounts without /sys/kernel/tracing keep tracefs at debugfs's tracing/.
    shutil.copytree(HOOKED / TRACING, tmp_path / "sys/kernel/debug/tracing")
    state = TracingSurface().collect(Kernel(tmp_path))
    assert state.counts["ftrace_functions"] == 8
    assert [g.what for g in state.gaps] == [
        "kprobes (debugfs kprobes/list)",
        FTRACE_OPS,
        TRACEPOINT_PROBES,
    ]
