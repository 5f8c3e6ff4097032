"""Reading tracefs, debugfs and the kprobe table into records, with a gap for what could not
be read."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from patchguard.kernel.errors import KernelAccessError, is_enoent
from patchguard.kernel.mounts import ensure_mounted
from patchguard.surfaces.ebpf import uprobes
from patchguard.surfaces.reading import Reading

if TYPE_CHECKING:
    from pathlib import Path

from patchguard.kernel.proc_modules import function_name
from patchguard.surfaces.tracing.parse import (
    parse_dynamic_events,
    parse_enabled_functions,
    parse_kprobe_list,
)
from patchguard.surfaces.tracing.paths import EVENT_FILES, KPROBE_LIST, NO_KPROBES, TRACEFS_DIRS
from patchguard.surfaces.tracing.records import DynamicEvent, Kprobe, TracingRecords

# --- collect ------------------------------------------------------------------------------------


def _populated(path: Path) -> bool:
    """A mount point exists as an empty directory even when nothing is mounted on it."""
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return False


def _tracefs(r: Reading) -> str | None:
    reason = ensure_mounted("tracefs", r.kernel.root)
    found = next((d for d in TRACEFS_DIRS if _populated(r.kernel.path(d))), None)
    if found is None:
        r.gap(
            "ftrace enabled_functions and dynamic trace events (tracefs)",
            reason or f"tracefs is mounted neither at {TRACEFS_DIRS[0]} nor at {TRACEFS_DIRS[1]}",
        )
    return found


def _collect_ftrace(r: Reading, tracefs: str) -> None:
    text = r.text("ftrace enabled_functions", f"{tracefs}/enabled_functions")
    if text is not None:
        r.records.extend(parse_enabled_functions(text))


def _event_file(r: Reading, tracefs: str, name: str) -> str:
    path = f"{tracefs}/{name}"
    try:
        text = r.kernel.read_text(path)
    except KernelAccessError as exc:
        # The file exists exactly when its kind of event is built into the kernel.
        absent = "; this kernel does not build these events" if is_enoent(exc) else ""
        r.gap(f"dynamic trace events ({name})", f"{exc}{absent}")
        return ""
    r.files_read += 1
    return text


def _collect_events(r: Reading, tracefs: str) -> None:
    seen: set[tuple[str, str]] = set()
    secrets = _secrets(r)
    for name in EVENT_FILES:
        for event in parse_dynamic_events(_event_file(r, tracefs, name)):
            if (event.group, event.event) not in seen:  # dynamic_events repeats the others
                seen.add((event.group, event.event))
                r.records.append(_resolved(r, event, secrets))


def _secrets(r: Reading) -> tuple[uprobes.SecretEntry, ...]:
    try:
        return uprobes.load_secrets()
    except uprobes.SecretListError as exc:
        r.gap("site secret-libraries list", str(exc))
        return uprobes.shipped_secrets()


def _resolved(
    r: Reading, event: DynamicEvent, secrets: tuple[uprobes.SecretEntry, ...]
) -> DynamicEvent:
    """A uprobe event with its file's build-id and symbol, and what it can read."""
    if event.binary is None or event.offset is None:
        return event
    site = uprobes.resolve(event.binary, event.offset, r.kernel.root)
    return replace(event, site=site, secret=uprobes.secret_at(site, secrets))


def _collect_kprobes(r: Reading) -> None:
    reason = ensure_mounted("debugfs", r.kernel.root)
    try:
        r.kernel.path(KPROBE_LIST).stat()
    except FileNotFoundError:
        r.gap("kprobes (debugfs kprobes/list)", reason or f"{NO_KPROBES} ({KPROBE_LIST} absent)")
        return
    except OSError:
        pass  # EACCES and the like: the read below reports it with its reason
    text = r.text("kprobes (debugfs kprobes/list)", KPROBE_LIST)
    if text is not None:
        probes = parse_kprobe_list(text)
        r.records.extend(_with_handlers(r, probes) if probes else probes)


def _with_handlers(r: Reading, probes: list[Kprobe]) -> list[Kprobe]:
    """The probes with the handler that registered each, from the kernel's kprobe_table."""
    from patchguard.kernel.kprobe_table import read_handlers

    kernel = r.kernel
    try:
        handlers = read_handlers(kernel.memory(), kernel.kallsyms, kernel.vmlinux_btf)
    except KernelAccessError as exc:
        r.gap("kprobe handlers (kprobe_table)", str(exc))
        return probes
    names = kernel.attributor()
    by_probe = {(h.address, h.kind): h.handler for h in handlers}
    out = []
    for probe in probes:
        handler = by_probe.get((probe.address or 0, probe.probe_type))
        if handler is None:
            out.append(probe)
            continue
        name, module = function_name(handler, names)
        out.append(replace(probe, handler=name, handler_module=module))
    return out


def _counts(records: TracingRecords, files_read: int) -> dict[str, int]:
    hooks, events = records.ftrace_hooks, records.events
    return {
        "ftrace_functions": len(hooks),
        "ipmodify": sum(h.ipmodify for h in hooks),
        "direct": sum(h.direct_call for h in hooks),
        "kprobes": len(records.kprobes),
        "dynamic_events": len(events),
        "uprobes": sum(e.binary is not None for e in events),
        # Says that files were read and held nothing, which zero hooks alone cannot say.
        "files_read": files_read,
    }
