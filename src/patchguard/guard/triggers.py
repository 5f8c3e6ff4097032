"""Cheap signals read every second: if one changes, the surfaces behind it are collected and
assessed at once, instead of waiting for the next full sweep."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.bpf import syscall as bpf


def _ids(cmd: int, name: str) -> str:
    try:
        return ",".join(map(str, bpf.next_ids(cmd, name)))
    except bpf.BpfError as exc:
        return f"error:{exc.errno}"


def _file_digest(kernel: Kernel, path: str) -> str:
    try:
        return hashlib.sha256(kernel.read_text(path).encode()).hexdigest()
    except KernelAccessError as exc:
        return f"unreadable:{exc.reason}"


@dataclass(frozen=True)
class Trigger:
    name: str
    surfaces: tuple[str, ...]  # what to collect when it fires
    read: Callable[[Kernel], str]


TRIGGERS = (
    Trigger(
        "bpf",
        ("ebpf",),
        lambda k: (
            _ids(bpf.BPF_PROG_GET_NEXT_ID, "PROG_GET_NEXT_ID")
            + "|"
            + _ids(bpf.BPF_LINK_GET_NEXT_ID, "LINK_GET_NEXT_ID")
        ),
    ),
    Trigger("modules", ("modules",), lambda k: _file_digest(k, "/proc/modules")),
    Trigger("kprobes", ("tracing",), lambda k: _file_digest(k, "/sys/kernel/debug/kprobes/list")),
    Trigger(
        "dynamic_events",  # uprobes, which kprobes/list leaves out, and every other dynamic event
        ("tracing",),
        lambda k: (
            _file_digest(k, "/sys/kernel/tracing/dynamic_events")
            + _file_digest(k, "/sys/kernel/tracing/uprobe_events")
        ),
    ),
    Trigger(
        "ftrace", ("tracing",), lambda k: _file_digest(k, "/sys/kernel/tracing/enabled_functions")
    ),
    Trigger(
        "posture",
        ("posture",),
        lambda k: (
            _file_digest(k, "/proc/sys/kernel/tainted")
            + _file_digest(k, "/sys/kernel/security/lockdown")
        ),
    ),
)


class TriggerState:
    """Remembers each trigger's last reading; `fired()` names the ones that changed."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._last: dict[str, str] = {t.name: t.read(kernel) for t in TRIGGERS}

    def fired(self) -> list[Trigger]:
        changed = []
        for trigger in TRIGGERS:
            now = trigger.read(self._kernel)
            if now != self._last[trigger.name]:
                self._last[trigger.name] = now
                changed.append(trigger)
        return changed
