"""The ebpf surface: reads every program, link and map through bpf(2), names what the kernel
keeps as numbers (helpers, BTF ids, devices, user-space probe sites), and says what keeps each
program alive."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from patchguard.findings import Finding, Gap
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.bpf import objects as objs
from patchguard.kernel.bpf.owners import Holder, Owners, PerfAttachment, find_owners
from patchguard.kernel.bpf.peers import peer_programs
from patchguard.kernel.bpf.syscall import BpfError
from patchguard.kernel.btf import Btf
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.ebpf import network, uprobes
from patchguard.surfaces.ebpf.assess import NAME, assess_program, kept_by_nothing
from patchguard.surfaces.ebpf.records import (
    Attachment,
    BpfLink,
    BpfMap,
    BpfProgram,
    EbpfRecords,
    Owner,
)
from patchguard.surfaces.ebpf.uprobes import SecretHit

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
# A tail call's xlated instruction reads `call 12` (BPF_FUNC_tail_call, as bpf_insn_prepare_dump
# leaves it), not an offset from __bpf_call_base like every other helper.
BPF_FUNC_TAIL_CALL = 12
SETTLE_SECONDS = 0.05  # before a second look at programs nothing keeps


def helper_name(function: str) -> str:
    """The BPF helper a called kernel function implements: `htab_map_lookup_elem` and
    `__htab_map_lookup_elem` -> `bpf_map_lookup_elem`; helpers keep their own name."""
    if not function.startswith("bpf_"):
        for op in MAP_OPS:
            if function.endswith(f"_map_{op}"):
                return f"bpf_map_{op}"
    return function


class EbpfSurface:
    name = NAME
    title = "eBPF programs and links"

    def collect(self, kernel: Kernel) -> SurfaceState[EbpfRecords]:
        if not kernel.live:
            return _unread("bpf(2) reads only the live kernel")
        try:
            first = _read(kernel)
        except BpfError as exc:
            return _unread(str(exc))
        suspects = {p.prog_id for p in first.records.programs if kept_by_nothing(p)}
        if not suspects:
            return first
        # a loader may take a link or pass its fd on while this read went by: read once more
        time.sleep(SETTLE_SECONDS)
        try:
            return settle_orphans(first, _read(kernel), suspects)
        except BpfError:
            return first  # unread the second time: the first look stands

    def assess(self, state: SurfaceState[EbpfRecords]) -> list[Finding]:
        return [f for prog in state.records.programs for f in assess_program(prog)]


def _read(kernel: Kernel) -> SurfaceState[EbpfRecords]:
    """One look at every program, link and map; BpfError where they cannot be listed."""
    progs, links, maps = objs.all_progs(), objs.all_links(), objs.all_maps()
    # patchguard's own objects (memory reader, task iterator, symbolizer) are not the host's
    own, own_maps = set(kernel.own_prog_ids), set(kernel.own_map_ids)
    seen = _Seen(kernel, [link for link in links if link.prog_id not in own])
    seen.maps = {m.map_id: m for m in maps if m.map_id not in own_maps}
    seen.read(progs)
    # Read again: a lookup program patchguard loaded while these were listed (the scan's
    # other surfaces run beside this one) is known by identity now, after the owner walk.
    own |= kernel.own_prog_ids
    own_maps |= kernel.own_map_ids
    peers, gone = _peers(progs, own, seen)
    own |= gone
    own_maps |= {m for p in progs if p.prog_id in peers for m in p.map_ids}
    seen.links = [link for link in seen.links if link.prog_id not in peers]
    seen.maps = {i: m for i, m in seen.maps.items() if i not in own_maps}
    programs = [_program(p, seen, peers.get(p.prog_id)) for p in progs if p.prog_id not in own]
    records = EbpfRecords(
        tuple(programs),
        tuple(_link(link, seen) for link in seen.links),
        tuple(_map(m, seen.owners) for m in seen.maps.values()),
    )
    return SurfaceState(NAME, records, _counts(records), seen.gaps)


def settle_orphans(
    first: SurfaceState[EbpfRecords], second: SurfaceState[EbpfRecords], suspects: set[int]
) -> SurfaceState[EbpfRecords]:
    """The first read, with each program it found kept by nothing as the second read saw it:
    kept now, or an orphan on a second look too; one gone meanwhile is dropped. Programs new in
    the second read are left to the next scan, as any loaded after the first was."""
    again = {p.prog_id: p for p in second.records.programs}
    programs: list[BpfProgram] = []
    for p in first.records.programs:
        if p.prog_id not in suspects:
            programs.append(p)
        elif p.prog_id in again:
            q = again[p.prog_id]
            programs.append(replace(q, second_look=kept_by_nothing(q)))
    links = {link.link_id: link for link in first.records.links}
    links |= {link.link_id: link for link in second.records.links if link.prog_id in suspects}
    records = replace(first.records, programs=tuple(programs), links=tuple(links.values()))
    gaps = [*first.gaps, *(g for g in second.gaps if g not in first.gaps)]
    return SurfaceState(NAME, records, _counts(records), gaps)


def _counts(records: EbpfRecords) -> dict[str, int]:
    return {
        "programs": len(records.programs),
        "links": len(records.links),
        "maps": len(records.maps),
    }


def _unread(reason: str) -> SurfaceState[EbpfRecords]:
    return SurfaceState(NAME, EbpfRecords(), gaps=[Gap(NAME, "bpf objects", reason)])


@dataclass
class _Seen:
    """Everything read once per scan that programs are described with."""

    kernel: Kernel
    links: list[objs.LinkInfo]
    maps: dict[int, objs.MapInfo] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    owners: Owners = field(default_factory=Owners)
    names: _Names | None = None
    secrets: tuple[uprobes.SecretEntry, ...] = ()
    places: network.Places | None = None
    tail_slots: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # map -> slots

    def read(self, progs: Sequence[objs.ProgInfo]) -> None:
        self.owners = find_owners(self.kernel.root)
        self.gaps += [Gap(NAME, "bpffs pin", err) for err in self.owners.errors]
        self.names = _Names(self.kernel, self.gaps)
        self._read_secrets()
        self._read_places(progs)
        self._read_tail_calls()

    def _read_secrets(self) -> None:
        try:
            self.secrets = uprobes.load_secrets()
        except uprobes.SecretListError as exc:
            self.gaps.append(Gap(NAME, "site secret-libraries list", str(exc)))
            self.secrets = uprobes.shipped_secrets()

    def _read_places(self, progs: Sequence[objs.ProgInfo]) -> None:
        """Attach points no link names: devices (XDP, tc, tcx) in every network namespace,
        sockmaps, and cgroups (asked only for the types of programs without a link)."""
        root = self.kernel.root
        spaces = network.namespaces(root)
        net = network.attachments(spaces, self.gaps)
        linked = {link.prog_id for link in self.links}
        unlinked = {p.prog_type for p in progs if p.prog_id not in linked}
        for found in (
            network.sockmap_attachments(list(self.maps.values())),
            network.cgroup_attachments(root, unlinked, self.gaps),
        ):
            for prog_id, places in found.items():
                net.setdefault(prog_id, []).extend(places)
        labels = {ns.inode: ns.label for ns in spaces}
        names = {m.map_id: m.name for m in self.maps.values()}
        self.places = network.Places(root, net, labels, names)

    def _read_tail_calls(self) -> None:
        for m in self.maps.values():
            if m.map_type != "prog_array":
                continue
            try:
                self.tail_slots[m.map_id] = list(objs.prog_array_slots(m.map_id, m.max_entries))
            except BpfError as exc:
                if exc.errno != 2:  # ENOENT: the map went away while we looked
                    self.gaps.append(Gap(NAME, f"prog_array map {m.map_id}", str(exc)))

    @property
    def name(self) -> _Names:
        assert self.names is not None, "read() first"
        return self.names

    @property
    def where(self) -> network.Places:
        assert self.places is not None, "read() first"
        return self.places


class _Names:
    """Turns the kernel's numbers into names: helper call offsets through kallsyms, BTF ids
    through the BTF objects. A missing name is a gap, never a guess."""

    def __init__(self, kernel: Kernel, gaps: list[Gap]) -> None:
        self._kernel = kernel
        self._gaps = gaps
        self._call_base: int | None = None
        self._helpers: dict[int, str] = {}
        self._prog_btf: dict[int, Btf | None] = {}

    def helper(self, offset: int) -> str:
        if offset in self._kernel.helper_names:
            return self._kernel.helper_names[offset]
        if offset not in self._helpers:
            self._helpers[offset] = self._helper_name(offset)
        return self._helpers[offset]

    def _helper_name(self, offset: int) -> str:
        if offset == BPF_FUNC_TAIL_CALL:
            return "bpf_tail_call"
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

    def program_name(self, p: objs.ProgInfo) -> str:
        """The full name of the program's main function from its own BTF (func_info): the
        kernel keeps only 15 characters, and two programs can read the same."""
        if not p.btf_id or not p.func_type_id:
            return p.name
        if p.btf_id not in self._prog_btf:
            self._prog_btf[p.btf_id] = self._load_prog_btf(p.btf_id)
        btf = self._prog_btf[p.btf_id]
        full = btf.func_name(p.func_type_id) if btf is not None else None
        return full if full and full.startswith(p.name) else p.name

    def _load_prog_btf(self, btf_id: int) -> Btf | None:
        try:
            return Btf.parse(objs.btf_data(btf_id), where=f"BTF object {btf_id}")
        except KernelAccessError as exc:
            if getattr(exc, "errno", None) != 2:
                self._gaps.append(Gap(NAME, f"BTF object {btf_id}", str(exc)))
            return None


def _owner(holders: Sequence[Holder]) -> Owner:
    p = holders[0].process
    missing = p.exe is not None and not p.exe_deleted and not os.path.exists(p.exe)
    fd = min(h.fd for h in holders)
    return Owner(p.pid, p.comm, p.exe, p.exe_deleted, missing, fd, len({h.fd for h in holders}))


def _by_process(holders: Sequence[Holder]) -> tuple[Owner, ...]:
    """One owner per process, with how many of its fds hold the object."""
    grouped: dict[int, list[Holder]] = {}
    for h in holders:
        grouped.setdefault(h.process.pid, []).append(h)
    return tuple(_owner(group) for group in grouped.values())


def _owners_of(owners: Owners, kind: str, obj_id: int) -> tuple[Owner, ...]:
    return _by_process(owners.holders.get((kind, obj_id), []))


def _boot_epoch() -> float:
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _probe_attachments(link: objs.LinkInfo, seen: _Seen) -> list[Attachment]:
    assert link.probe is not None
    out = []
    for offset in link.probe.offsets:
        site = uprobes.resolve(link.probe.path, offset, seen.kernel.root)
        out.append(
            Attachment(
                "link",
                f"{link.probe.kind}:{site.spelled}",
                link.link_id,
                link.link_type,
                link.attach_type,
                uprobe=site,
                secret=_secret(site, seen),
            )
        )
    return out


def _secret(site: uprobes.ProbedSite, seen: _Seen) -> SecretHit | None:
    return uprobes.secret_at(site, seen.secrets)


def _link_attachments(link: objs.LinkInfo, seen: _Seen) -> list[Attachment]:
    if link.probe is not None:
        return _probe_attachments(link, seen)
    net = network.link_attach(link, seen.where)
    target = net.spelled() if net is not None else _link_target(link, seen.name)
    return [Attachment("link", target, link.link_id, link.link_type, link.attach_type, net=net)]


def _perf_attachment(a: PerfAttachment, seen: _Seen) -> Attachment:
    if a.fd_type in ("uprobe", "uretprobe"):
        site = uprobes.resolve(a.name, a.probe_offset, seen.kernel.root)
        target = f"{a.fd_type}:{site.spelled}"
        return Attachment("perf_event", target, uprobe=site, secret=_secret(site, seen))
    return Attachment("perf_event", a.target)


def _attachments(p: objs.ProgInfo, seen: _Seen) -> list[Attachment]:
    """One attachment per attach point: a perf event that a link also holds is the link's."""
    found: dict[str | None, Attachment] = {}
    for link in seen.links:
        if link.prog_id == p.prog_id:
            for a in _link_attachments(link, seen):
                found.setdefault(a.target, a)
    for perf in seen.owners.perf:
        if perf.prog_id == p.prog_id:
            a = _perf_attachment(perf, seen)
            found.setdefault(a.target, a)
    linked = {a.net.spelled() for a in found.values() if a.net is not None}
    for net in seen.where.net.get(p.prog_id, []):
        if net.spelled() not in linked:  # a link's own device is already listed
            found.setdefault(net.spelled(), Attachment(net.hook, net.spelled(), net=net))
    return list(found.values())


def _peers(
    progs: Sequence[objs.ProgInfo], own: set[int], seen: _Seen
) -> tuple[dict[int, int], set[int]]:
    """Programs of other patchguard processes (peers.py): held by them alone, never pinned."""
    holders: dict[int, set[int]] = {}
    for (kind, obj_id), held in seen.owners.holders.items():
        if kind == "prog" and not seen.owners.pins.get((kind, obj_id)):
            holders[obj_id] = {h.process.pid for h in held}
    if not holders:
        return {}, set()
    try:
        btf: Btf | None = seen.kernel.vmlinux_btf
    except KernelAccessError:
        btf = None  # then a peer's task iterator is verified by our own, if it is alive
    return peer_programs(progs, own, holders, btf)


def _program(p: objs.ProgInfo, seen: _Seen, peer: int | None = None) -> BpfProgram:
    attachments = _attachments(p, seen)
    perf = [a.holder for a in seen.owners.perf if a.prog_id == p.prog_id]
    owners = _by_process([*seen.owners.holders.get(("prog", p.prog_id), []), *perf])
    pins = tuple(seen.owners.pins.get(("prog", p.prog_id), []))
    loaded = datetime.fromtimestamp(_boot_epoch() + p.load_time_ns / 1e9, UTC)
    tail = tuple(
        prog for m in p.map_ids for _slot, prog in seen.tail_slots.get(m, []) if prog != p.prog_id
    )
    return BpfProgram(
        prog_id=p.prog_id,
        prog_type=p.prog_type,
        name=seen.name.program_name(p),
        tag=p.tag,
        loaded_at=loaded.isoformat(timespec="seconds"),
        created_by_uid=p.created_by_uid,
        map_ids=p.map_ids,
        btf_id=p.btf_id,
        attach_btf=seen.name.btf_func(p.attach_btf_obj_id, p.attach_btf_id),
        helpers=tuple(dict.fromkeys(seen.name.helper(off) for off in p.calls.helper_offsets)),
        kfuncs=tuple(seen.name.btf_func(1, i) or "" for i in p.calls.kfunc_btf_ids),
        attachments=tuple(attachments),
        owners=owners,
        pins=pins,
        helpers_hidden=p.calls.hidden,
        kernel_name=p.name,
        tail_calls=tail,
        maps=tuple(_map_words(m, seen) for m in p.map_ids),
        kept_by=tuple(_kept_by(p.prog_id, attachments, owners, pins, seen)),
        patchguard_pid=peer,
    )


def _map_words(map_id: int, seen: _Seen) -> str:
    m = seen.maps.get(map_id)
    if m is None:
        return f"map {map_id}"
    pins = seen.owners.pins.get(("map", map_id), [])
    where = f"pinned at {', '.join(pins)}" if pins else "not pinned"
    return f"map {map_id} ({m.name or 'unnamed'}, {m.map_type}) {where}"


def _kept_by(
    prog_id: int,
    attachments: Sequence[Attachment],
    owners: Sequence[Owner],
    pins: Sequence[str],
    seen: _Seen,
) -> list[str]:
    """What keeps the program alive, in words: processes, pins, links (and what keeps each
    link), tc filters and XDP attachments, tail-call tables."""
    kept = [f"pid {o.pid} ({o.comm}) holds {_fds(o.fd_count)}" for o in owners]
    kept += [f"pinned at {pin}" for pin in pins]
    for link_id in dict.fromkeys(a.link_id for a in attachments if a.link_id is not None):
        kept.append(_link_keeper(link_id, seen))
    kept += [f"{a.net.kept_by} ({a.target})" for a in attachments if a.net and a.net.kept_by]
    for map_id, slots in seen.tail_slots.items():
        for slot, prog in slots:
            if prog == prog_id:
                kept.append(f"slot {slot} of tail-call table {_map_words(map_id, seen)}")
    return kept


def _fds(count: int) -> str:
    return "1 fd" if count == 1 else f"{count} fds"


def _link_keeper(link_id: int, seen: _Seen) -> str:
    holders = _owners_of(seen.owners, "link", link_id)
    pins = seen.owners.pins.get(("link", link_id), [])
    if pins and not holders:
        return f"link {link_id} pinned at {', '.join(pins)}: a pin alone keeps this hook alive"
    parts = [f"pid {o.pid} ({o.comm})" for o in holders] + [f"pinned at {p}" for p in pins]
    return f"link {link_id}, held by {', '.join(parts) or 'nothing user space can see'}"


def _link_target(link: objs.LinkInfo, names: _Names) -> str | None:
    if link.link_type == "tracing":
        return names.btf_func(link.target_obj_id, link.target_btf_id)
    return link.target


def _link(link: objs.LinkInfo, seen: _Seen) -> BpfLink:
    targets = [a.target for a in _link_attachments(link, seen)]
    return BpfLink(
        link.link_id,
        link.link_type,
        link.prog_id,
        link.attach_type,
        ", ".join(t for t in targets if t) or None,
        _owners_of(seen.owners, "link", link.link_id),
        tuple(seen.owners.pins.get(("link", link.link_id), [])),
    )


def _map(m: objs.MapInfo, owners: Owners) -> BpfMap:
    return BpfMap(
        m.map_id,
        m.map_type,
        m.name,
        _owners_of(owners, "map", m.map_id),
        tuple(owners.pins.get(("map", m.map_id), [])),
    )
