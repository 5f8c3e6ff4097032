"""The tracing surface's name and the tracefs and debugfs files it reads."""

from __future__ import annotations

from typing import TypeVar

NAME = "tracing"
ROOTKIT = "T1014"

# tracefs has its own mount since 4.1; older setups only have it inside debugfs.
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
KPROBE_LIST = "/sys/kernel/debug/kprobes/list"
NO_KPROBES = "kprobes not built or debugfs has no kprobes/list"
# dynamic_events lists every kind (kprobe, uprobe, fprobe, eprobe, synthetic); the older files
# list one kind each and are read too, for kernels or mounts without dynamic_events.
EVENT_FILES = ("dynamic_events", "kprobe_events", "uprobe_events")
# A whole-kernel tracer (current_tracer=function) hooks tens of thousands of functions through
# one ops; above this many, per-function "sensitive function" findings would only bury the rest.
GLOBAL_TRACER_FUNCTIONS = 1000

T = TypeVar("T")
