"""eBPF: every program and link, where it is attached, what it calls, and who keeps it alive.

Programs are the way modern rootkits hook Linux without a module (bpf_probe_write_user to lie to
user space, bpf_override_return to change kernel results, bpf_send_signal to kill defenders,
uprobes on PAM and TLS libraries to read secrets, XDP and tc programs woken by a magic packet),
and also the way every modern security agent works: this surface says what each one is, and the
exception ledger says which are sanctioned.

Modules: records (what is recorded), uprobes (user-space probe sites: file, build-id, symbol,
and the secret-handling libraries of secret_libraries.toml), network (XDP, tc, tcx attach points
in every network namespace), surface (EbpfSurface: reading and naming), assess (findings).
"""

from __future__ import annotations

from patchguard.surfaces.ebpf.assess import (
    NAME,
    ROOTKIT_HELPERS,
    SENSITIVE_PREFIXES,
    assess_program,
)
from patchguard.surfaces.ebpf.records import (
    Attachment,
    BpfLink,
    BpfMap,
    BpfProgram,
    EbpfRecords,
    NetAttach,
    Owner,
)
from patchguard.surfaces.ebpf.surface import EbpfSurface, helper_name
from patchguard.surfaces.ebpf.uprobes import SecretHit

__all__ = [
    "NAME",
    "ROOTKIT_HELPERS",
    "SENSITIVE_PREFIXES",
    "Attachment",
    "BpfLink",
    "BpfMap",
    "BpfProgram",
    "EbpfRecords",
    "EbpfSurface",
    "NetAttach",
    "Owner",
    "SecretHit",
    "assess_program",
    "helper_name",
]
