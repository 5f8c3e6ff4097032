"""eBPF: every program and link, where it is attached, what it calls, and who keeps it alive.

Programs are the way modern rootkits hook Linux without a module (bpf_probe_write_user to lie to
user space, bpf_override_return to change kernel results, bpf_send_signal to kill defenders),
and also the way every modern security agent works: this surface says what each one is, and the
exception ledger (policy/) says which are sanctioned.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from patchguard.findings import Disposition, Finding, Gap, Severity
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.bpf import objects as objs
from patchguard.kernel.bpf.owners import Holder, Owners, find_owners
from patchguard.kernel.bpf.syscall import BpfError
from patchguard.surfaces.base import SurfaceState

NAME = "ebpf"

# Helpers whose only common use is to subvert: the kernel's function name -> why it matters.
ROOTKIT_HELPERS = {
    "bpf_probe_write_user": (
        Severity.HIGH,
        "writes into user-space memory: can rewrite syscall "
        "arguments and results, hiding files and processes",
    ),
    "bpf_override_return": (
        Severity.HIGH,
        "forces the return value of a kernel function: can "
        "make security checks and syscalls fail or succeed at will",
    ),
    "bpf_send_signal": (
        Severity.HIGH,
        "sends signals from kernel context: can kill security agents the moment they start",
    ),
    "bpf_send_signal_thread": (
        Severity.HIGH,
        "sends signals from kernel context: can kill security agents the moment they start",
    ),
    "bpf_sys_bpf": (
        Severity.HIGH,
        "calls bpf(2) from inside a program: loads and attaches more "
        "programs with no process behind them",
    ),
}
# Attach points on the paths rootkits hook: syscalls, exec, credentials, files, directory reads.
SENSITIVE_PREFIXES = (
    "sys_enter",
    "sys_exit",
    "syscalls:",
    "raw_syscalls:",
    "__x64_sys_",
    "__ia32_sys_",
    "__se_sys_",
    "do_sys_",
    "commit_creds",
    "prepare_creds",
    "prepare_kernel_cred",
    "security_",
    "bpf_lsm_",
    "do_execve",
    "bprm_",
    "sched:sched_process_exec",
    "vfs_",
    "filldir",
    "iterate_dir",
    "tcp4_seq_show",
    "tcp6_seq_show",
    "do_filp_open",
    "openat",
)


# The verifier turns map helper calls into calls of the map type's own operation (or inlines
# them around __htab_map_lookup_elem and friends): name those by the helper the program called,
# so a report, and a manifest, read the same on every kernel and map type.
MAP_OPS = (
    "lookup_elem",
    "update_elem",
    "delete_elem",
    "push_elem",
    "pop_elem",
    "peek_elem",
    "lookup_percpu_elem",
)


def helper_name(function: str) -> str:
    """The BPF helper a called kernel function implements: `htab_map_lookup_elem` and
    `__htab_map_lookup_elem` -> `bpf_map_lookup_elem`; helpers keep their own name."""
    if not function.startswith("bpf_"):
        for op in MAP_OPS:
            if function.endswith(f"_map_{op}"):
                return f"bpf_map_{op}"
    return function


@dataclass(frozen=True)
class Owner:
    pid: int
    comm: str
    exe: str | None
    exe_deleted: bool
    exe_missing: bool
    fd: int


@dataclass(frozen=True)
class Attachment:
    via: str  # "link" or "perf_event" (PERF_EVENT_IOC_SET_BPF, no link object)
    target: str | None
    link_id: int | None = None
    link_type: str | None = None
    attach_type: str | None = None


@dataclass(frozen=True)
class BpfProgram:
    prog_id: int
    prog_type: str
    name: str
    tag: str
    loaded_at: str  # ISO 8601, UTC
    created_by_uid: int
    map_ids: tuple[int, ...]
    btf_id: int
    attach_btf: str | None  # tracing/LSM programs: the kernel function they were verified for
    helpers: tuple[str, ...]
    kfuncs: tuple[str, ...]
    attachments: tuple[Attachment, ...]
    owners: tuple[Owner, ...]
    pins: tuple[str, ...]
    helpers_hidden: bool = False


@dataclass(frozen=True)
class BpfLink:
    link_id: int
    link_type: str
    prog_id: int
    attach_type: str | None
    target: str | None
    owners: tuple[Owner, ...]
    pins: tuple[str, ...]


@dataclass(frozen=True)
class BpfMap:
    map_id: int
    map_type: str
    name: str
    owners: tuple[Owner, ...]
    pins: tuple[str, ...]


class EbpfSurface:
    name = NAME
    title = "eBPF programs and links"

    def collect(self, kernel: Kernel) -> SurfaceState:
        if not kernel.live:
            return SurfaceState(
                NAME, [], gaps=[Gap(NAME, "bpf objects", "bpf(2) reads only the live kernel")]
            )
        try:
            progs, links, maps = objs.all_progs(), objs.all_links(), objs.all_maps()
        except BpfError as exc:
            return SurfaceState(NAME, [], gaps=[Gap(NAME, "bpf objects", str(exc))])
        gaps: list[Gap] = []
        owners = find_owners(kernel.root)
        gaps += [Gap(NAME, "bpffs pin", err) for err in owners.errors]
        names = _Names(kernel, gaps)
        # patchguard's own objects (memory reader, task iterator, symbolizer) are not the host's
        own, own_maps = set(kernel.own_prog_ids), set(kernel.own_map_ids)
        links = [link for link in links if link.prog_id not in own]
        maps = [m for m in maps if m.map_id not in own_maps]
        records: list[object] = []
        programs = [_program(p, links, owners, names) for p in progs if p.prog_id not in own]
        records += programs
        records += [_link(link, owners, names) for link in links]
        records += [_map(m, owners) for m in maps]
        counts = {"programs": len(programs), "links": len(links), "maps": len(maps)}
        return SurfaceState(NAME, records, counts, gaps)

    def assess(self, state: SurfaceState) -> list[Finding]:
        findings: list[Finding] = []
        for prog in state.records:
            if isinstance(prog, BpfProgram):
                findings += assess_program(prog)
        return findings


class _Names:
    """Turns the kernel's numbers into names: helper call offsets through kallsyms, BTF ids
    through the BTF objects. A missing name is a gap, never a guess."""

    def __init__(self, kernel: Kernel, gaps: list[Gap]) -> None:
        self._kernel = kernel
        self._gaps = gaps
        self._call_base: int | None = None
        self._helpers: dict[int, str] = {}

    def helper(self, offset: int) -> str:
        if offset in self._kernel.helper_names:
            return self._kernel.helper_names[offset]
        if offset not in self._helpers:
            self._helpers[offset] = self._helper_name(offset)
        return self._helpers[offset]

    def _helper_name(self, offset: int) -> str:
        unnamed = f"helper@{offset:+#x}"
        try:
            syms = self._kernel.kallsyms
            if self._call_base is None:
                self._call_base = syms.address_of("__bpf_call_base")
        except KernelAccessError as exc:
            self._gaps.append(Gap(NAME, "helper names", str(exc)))
            return unnamed
        if self._call_base is None:
            return unnamed
        found = syms.at(self._call_base + offset)
        if not found:
            return unnamed
        self._kernel.helper_names[offset] = helper_name(found[0].name)
        return self._kernel.helper_names[offset]

    def btf_func(self, obj_id: int, type_id: int) -> str | None:
        if not type_id:
            return None
        try:
            return self._kernel.btf_func_name(obj_id, type_id)
        except KernelAccessError as exc:
            self._gaps.append(Gap(NAME, f"BTF object {obj_id}", str(exc)))
            return f"btf:{obj_id}/{type_id}"


def _owner(holder: Holder, kernel_root: str = "/") -> Owner:
    p = holder.process
    missing = p.exe is not None and not p.exe_deleted and not os.path.exists(p.exe)
    return Owner(p.pid, p.comm, p.exe, p.exe_deleted, missing, holder.fd)


def _owners_of(owners: Owners, kind: str, obj_id: int) -> tuple[Owner, ...]:
    return tuple(_owner(h) for h in owners.holders.get((kind, obj_id), []))


def _boot_epoch() -> float:
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _program(
    p: objs.ProgInfo, links: Sequence[objs.LinkInfo], owners: Owners, names: _Names
) -> BpfProgram:
    attachments = [
        Attachment(
            "link", _link_target(link, names), link.link_id, link.link_type, link.attach_type
        )
        for link in links
        if link.prog_id == p.prog_id
    ]
    perf = [a for a in owners.perf if a.prog_id == p.prog_id]
    attachments += [Attachment("perf_event", a.target) for a in perf]
    holders = list(_owners_of(owners, "prog", p.prog_id)) + [_owner(a.holder) for a in perf]
    loaded = datetime.fromtimestamp(_boot_epoch() + p.load_time_ns / 1e9, UTC)
    return BpfProgram(
        prog_id=p.prog_id,
        prog_type=p.prog_type,
        name=p.name,
        tag=p.tag,
        loaded_at=loaded.isoformat(timespec="seconds"),
        created_by_uid=p.created_by_uid,
        map_ids=p.map_ids,
        btf_id=p.btf_id,
        attach_btf=names.btf_func(p.attach_btf_obj_id, p.attach_btf_id),
        helpers=tuple(names.helper(off) for off in p.calls.helper_offsets),
        kfuncs=tuple(names.btf_func(1, i) or "" for i in p.calls.kfunc_btf_ids),
        attachments=tuple(attachments),
        owners=tuple(dict.fromkeys(holders)),
        pins=tuple(owners.pins.get(("prog", p.prog_id), [])),
        helpers_hidden=p.calls.hidden,
    )


def _link_target(link: objs.LinkInfo, names: _Names) -> str | None:
    if link.link_type == "tracing":
        return names.btf_func(link.target_obj_id, link.target_btf_id)
    return link.target


def _link(link: objs.LinkInfo, owners: Owners, names: _Names) -> BpfLink:
    return BpfLink(
        link.link_id,
        link.link_type,
        link.prog_id,
        link.attach_type,
        _link_target(link, names),
        _owners_of(owners, "link", link.link_id),
        tuple(owners.pins.get(("link", link.link_id), [])),
    )


def _map(m: objs.MapInfo, owners: Owners) -> BpfMap:
    return BpfMap(
        m.map_id,
        m.map_type,
        m.name,
        _owners_of(owners, "map", m.map_id),
        tuple(owners.pins.get(("map", m.map_id), [])),
    )


def _subject(prog: BpfProgram) -> str:
    return f"prog {prog.prog_id} ({prog.name or 'unnamed'}, {prog.prog_type})"


def _evidence(prog: BpfProgram) -> dict[str, str | int | bool | list[str] | list[int] | None]:
    return {
        "prog_id": prog.prog_id,
        "prog_type": prog.prog_type,
        "name": prog.name,
        "tag": prog.tag,
        "attach": [a.target or "?" for a in prog.attachments],
        "helpers": list(prog.helpers),
        "owners": [f"{o.pid} {o.exe or o.comm}" for o in prog.owners],
        "pins": list(prog.pins),
    }


def assess_program(prog: BpfProgram) -> list[Finding]:
    """Findings for one program, each with the program's identity as evidence."""
    findings: list[Finding] = []
    ev = _evidence(prog)

    def add(technique: str, severity: Severity, summary: str, attack: str = "T1014") -> None:
        findings.append(
            Finding(
                NAME,
                technique,
                severity,
                _subject(prog),
                summary,
                Disposition.SUSPICIOUS,
                attack,
                ev,
            )
        )

    for helper in prog.helpers:
        if helper in ROOTKIT_HELPERS:
            severity, why = ROOTKIT_HELPERS[helper]
            add("rootkit-helper", severity, f"calls {helper}, which {why}")
    sensitive = [a.target for a in prog.attachments if a.target and _sensitive(a.target)]
    if prog.attach_btf and _sensitive(prog.attach_btf):
        sensitive.append(prog.attach_btf)
    if sensitive:
        add(
            "sensitive-hook",
            Severity.MEDIUM,
            f"runs on {', '.join(sorted(set(sensitive)))}: a path rootkits hook to hide or "
            "tamper (syscalls, exec, credentials, files)",
        )
    if prog.prog_type == "sk_lookup":
        add(
            "socket-steering",
            Severity.MEDIUM,
            "an sk_lookup program picks which socket gets "
            "each new connection in its network namespace: a backdoor can sit behind any port",
            "T1205",
        )
    if prog.prog_type == "lsm":
        add(
            "lsm-hook",
            Severity.MEDIUM,
            f"an LSM program on {prog.attach_btf or '?'}: it can allow or deny security decisions",
        )
    if not prog.owners and not prog.pins and not any(a.via == "link" for a in prog.attachments):
        add(
            "orphan-program",
            Severity.MEDIUM,
            "no process holds it, no pin, no link: something in the kernel keeps it alive "
            "(a cgroup or netlink attachment without a link, a tail-call map, or a hidden owner)",
        )
    for o in prog.owners:
        if o.exe_deleted or o.exe_missing:
            state = "deleted" if o.exe_deleted else "not on disk"
            add(
                "loader-deleted",
                Severity.HIGH,
                f"its loader pid {o.pid} runs {o.exe}, which is {state}: a loader that "
                "removes itself hides where the program came from",
                "T1070.004",
            )
    return findings


def _sensitive(target: str) -> bool:
    bare = (
        target.split(":", 1)[1]
        if target.startswith(("tracepoint:", "raw_tracepoint:", "kprobe:", "kretprobe:"))
        else target
    )
    return bare.startswith(SENSITIVE_PREFIXES) or target.startswith(SENSITIVE_PREFIXES)
