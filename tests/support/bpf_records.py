"""BpfProgram records for unit tests of what is judged from them (assessment, manifests,
exceptions): one neutral program, each test changing only the fields its case is about."""

from __future__ import annotations

import dataclasses
from typing import Any

from patchguard.surfaces.ebpf import Attachment, BpfProgram

# No owner, no pin, no helper, no attachment: nothing in it says anything by itself.
NEUTRAL = BpfProgram(
    prog_id=7,
    prog_type="kprobe",
    name="x",
    tag="00" * 8,
    loaded_at="2026-01-10T12:00:00+00:00",
    created_by_uid=0,
    map_ids=(),
    btf_id=0,
    attach_btf=None,
    helpers=(),
    kfuncs=(),
    attachments=(),
    owners=(),
    pins=(),
)


def bpf_program(**changes: Any) -> BpfProgram:
    """The neutral program with `changes` (BpfProgram's field names) made."""
    return dataclasses.replace(NEUTRAL, **changes)


# bpftool's task iterator as bpftool-list-tasks.toml declares it, pinned through its iter link 91.
ITERATOR: dict[str, Any] = dict(
    prog_id=111,
    prog_type="tracing",
    name="list_tasks",
    tag="18ec12fd53df5169",
    map_ids=(32,),
    btf_id=40,
    attach_btf="bpf_iter_task",
    helpers=("bpf_seq_printf",),
    attachments=(Attachment("link", "task", 91, "iter", None),),
)
