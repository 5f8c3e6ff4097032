"""Parsers, pure functions over the text of enabled_functions, kprobes/list and the dynamic
event files, following the kernel's own printers."""

from __future__ import annotations

import re
from dataclasses import replace

from patchguard.surfaces.ebpf import uprobes
from patchguard.surfaces.tracing.records import (
    USER_PROBES,
    DynamicEvent,
    FtraceCallback,
    FtraceHook,
    Kprobe,
)

# --- parsers: pure functions over text ----------------------------------------------------------

_FTRACE_LINE = re.compile(
    r"^(?P<func>\S+)(?: \[(?P<mod>[^\]]+)\])? \((?P<count>\d+)\)(?P<rest>.*)$"
)
_CALLBACK = re.compile(
    r"^(?P<kind>tramp|ops): (?P<address>[^()]+?) \((?P<owner>[^()]*)\)(?P<rest>.*)$"
)


def _arrow(text: str) -> str | None:
    """The " ->%pS" that add_trampoline_func() appends, without any " {subops}" after it."""
    if " ->" not in text:
        return None
    return text.split(" ->", 1)[1].split(" {", 1)[0].strip() or None


def _callback(segment: str) -> FtraceCallback | None:
    if segment.endswith("ERROR!"):  # ftrace found no ops for a live site: keep it, it is odd
        return FtraceCallback(segment.split(":", 1)[0], "ERROR!", None)
    found = _CALLBACK.match(segment)
    if found is None:
        return None
    return FtraceCallback(
        found["kind"], found["address"].strip(), found["owner"].strip(), _arrow(found["rest"])
    )


def _ftrace_hook(line: str) -> FtraceHook | None:
    found = _FTRACE_LINE.match(line)
    if found is None:
        return None
    head, *segments = found["rest"].split("\t")
    flag_part = head.split(" ->", 1)[0]
    callbacks = tuple(cb for cb in map(_callback, segments) if cb is not None)
    return FtraceHook(
        function=found["func"],
        module=found["mod"],
        refcount=int(found["count"]),
        flags="".join(ch for ch in flag_part if ch.isalpha()),
        callbacks=callbacks,
        calls=_arrow(head),
    )


def parse_enabled_functions(text: str) -> list[FtraceHook]:
    """enabled_functions: `func[ [mod]] (refs) R I D O M\\ttramp: X (Y) ->Z\\tops: X (Y)`, and a
    continuation line `\\tdirect-->X` under functions with a direct call."""
    hooks: list[FtraceHook] = []
    for line in text.splitlines():
        if line.lstrip().startswith("direct-->") and hooks:
            target = line.split("-->", 1)[1].strip()
            hooks[-1] = replace(hooks[-1], direct=target)
            continue
        hook = _ftrace_hook(line.rstrip("\n"))
        if hook is not None:
            hooks.append(hook)
    return hooks


KPROBE_KINDS = {"k": "kprobe", "r": "kretprobe", "j": "jprobe"}


def _kprobe(line: str) -> Kprobe | None:
    # "%px  %s  %s+0x%x  %s " then "[GONE][DISABLED][OPTIMIZED][FTRACE]" run together.
    tokens = line.split()
    if len(tokens) < 3 or tokens[1] not in KPROBE_KINDS:
        return None
    try:
        address = int(tokens[0], 16) or None
    except ValueError:
        return None
    rest = [t for t in tokens[3:] if not t.startswith("[")]
    flags = tuple(re.findall(r"\[([A-Z]+)\]", " ".join(tokens[3:])))
    target = tokens[2]
    symbol, plus, off = target.partition("+0x")
    resolved = bool(plus) and not target.startswith("0x")
    return Kprobe(
        address=address,
        probe_type=KPROBE_KINDS[tokens[1]],
        symbol=symbol if resolved else None,
        offset=int(off.split("/", 1)[0], 16) if resolved else 0,
        module=rest[0] if rest else None,
        flags=flags,
        target=target,
    )


def parse_kprobe_list(text: str) -> list[Kprobe]:
    """debugfs kprobes/list, one registered probe per line (aggregated probes: one per user)."""
    return [p for p in map(_kprobe, text.splitlines()) if p is not None]


_EVENT_LINE = re.compile(
    r"^(?P<type>[a-z])(?P<maxactive>\d*):(?P<group>[^/\s]+)/(?P<event>\S+)"
    r"(?:\s+(?P<target>\S+))?(?P<args>.*)$"
)
_UPROBE_TARGET = re.compile(r"^/.*:0x[0-9a-fA-F]+(?:\(0x[0-9a-fA-F]+\))?$")
_EVENT_KINDS = {"f": "fprobe", "t": "tprobe", "e": "eprobe", "s": "synthetic"}


def _event_kind(letter: str, target: str | None) -> str:
    if letter in "pr":
        user = target is not None and _UPROBE_TARGET.match(target) is not None
        base = "uprobe" if user else "kprobe"
        return base if letter == "p" else base.replace("probe", "retprobe")
    if letter == "f" and target and target.endswith(("%return", ":exit")):
        return "fexit"
    return _EVENT_KINDS.get(letter, "other")


def _uprobe_spelling(target: str) -> str:
    """tracefs `/bin/bash:0x00000000004245c0(0x3c)` -> `/bin/bash+0x4245c0`, the one spelling
    of a uprobe target (the reference counter offset stays in the event's line)."""
    path, _, rest = target.rpartition(":")
    return uprobes.spell(path, int(rest.split("(", 1)[0], 16))


def parse_dynamic_events(text: str) -> list[DynamicEvent]:
    """kprobe_events / uprobe_events / dynamic_events lines, e.g. `p:kprobes/myprobe
    do_sys_open dfd=%ax`, `r4:kprobes/r vfs_read`, `p:uprobes/x /bin/bash:0x00000000004245c0`."""
    events = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _EVENT_LINE.match(line.strip())
        if found is None:  # older synthetic events print "name<TAB>fields": keep them as seen
            name = line.split()[0]
            events.append(DynamicEvent("other", "synthetic", name, None, (), line.strip()))
            continue
        kind, target = _event_kind(found["type"], found["target"]), found["target"]
        events.append(
            DynamicEvent(
                event_type=kind,
                group=found["group"],
                event=found["event"],
                target=_uprobe_spelling(target) if kind in USER_PROBES else target,
                args=tuple(found["args"].split()),
                line=line.strip(),
            )
        )
    return events
