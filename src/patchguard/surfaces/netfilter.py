"""Netfilter hooks: every function the kernel runs on packets at a netfilter hook, seen two
ways: the hook lists themselves, as `nft list hooks` dumps them through nfnetlink
(patchguard.kernel.nfnetlink_hook), and the BPF netfilter links, through bpf(2).

A packet hook is where rootkits wait for their "magic packet" (a trigger that opens a shell
or hides a connection) and where firewalls work. The kernel names each hook's function with
%ps: `nf_nat_ipv4_in` and its module `nf_nat`, or a bare `0x...` when no symbol covers the
address. A hook running code no symbol covers, or registered by a module that /proc/modules
does not list, is a module that hid itself after hooking: tampering. A BPF netfilter link is
named with whoever keeps it (a process holding the link, or a pin); one that nothing visible
keeps is suspicious (a link is released with its last fd or pin). Programs themselves are the
ebpf surface's subject: its findings are not repeated here.

Where the kernel has no hook dump (CONFIG_NETFILTER_NETLINK_HOOK off: Debian's 6.1, these
VMs), the hook lists are read from kernel memory instead (patchguard.kernel.nf_hooks), for
every network namespace, and each function is named the way %ps would: by kallsyms, in core
text or inside a module /proc/modules lists, else as a bare address.

The dump covers the scanning process's network namespace only; the memory view covers all
of them; BPF links are listed for every netns, without saying which.
"""

from __future__ import annotations

import errno
import gzip
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.kernel.bpf import objects as objs
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.owners import Owners, find_owners
from patchguard.kernel.errors import KernelAccessError, is_enoent, oserror_reason
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.nf_hooks import HookEntry, read_hooks
from patchguard.kernel.nfnetlink_hook import (
    NFNL_HOOK_TYPE_BPF,
    NFNL_HOOK_TYPE_NFT_FLOWTABLE,
    NFNL_HOOK_TYPE_NFTABLES,
    HookDumpError,
    HookSocket,
)
from patchguard.kernel.proc_modules import ProcModule, function_name, parse_proc_modules
from patchguard.surfaces.base import SurfaceState
from patchguard.surfaces.ebpf import Owner
from patchguard.surfaces.reading import Reading, one_of, records_of

if TYPE_CHECKING:
    from patchguard.kernel import Kernel

SURFACE = "netfilter"
ROOTKIT = "T1014"
PROC_MODULES = "/proc/modules"
CONFIG_OPTION = "CONFIG_NETFILTER_NETLINK_HOOK"

# enum NFPROTO_* (include/uapi/linux/netfilter.h).
NFPROTO_INET, NFPROTO_IPV4, NFPROTO_ARP, NFPROTO_NETDEV = 1, 2, 3, 5
NFPROTO_BRIDGE, NFPROTO_IPV6 = 7, 10
FAMILIES = {1: "inet", 2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}
# Hook numbers by the names nft uses: enum nf_inet_hooks (and the bridge's NF_BR_*, in the same
# order), NF_ARP_IN/OUT/FORWARD, enum nf_dev_hooks.
INET_HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress")
HOOK_NAMES = {NFPROTO_ARP: ("input", "output", "forward"), NFPROTO_NETDEV: ("ingress", "egress")}
# The lists nfnl_hook_entries_head() serves: net->nf.hooks_{ipv4,ipv6,arp,bridge}[hook]; netdev
# lists hang off each device. The first one answers whether the kernel can dump at all.
HOOK_LISTS = (
    *((NFPROTO_IPV4, h) for h in range(5)),
    *((NFPROTO_IPV6, h) for h in range(5)),
    *((NFPROTO_ARP, h) for h in range(3)),
    *((NFPROTO_BRIDGE, h) for h in range(5)),
)
NETDEV_HOOKS = (0, 1)
# A list this kernel does not have (egress before 5.16, a family not built), or a device that
# went away while we dumped: nothing is hooked there, nothing was missed.
ABSENT_LIST = frozenset({errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENODEV})
CHAIN_KINDS = {
    NFNL_HOOK_TYPE_NFTABLES: "nftables",
    NFNL_HOOK_TYPE_BPF: "bpf",
    NFNL_HOOK_TYPE_NFT_FLOWTABLE: "flowtable",
}


def hook_name(pf: int, hooknum: int) -> str:
    names = HOOK_NAMES.get(pf, INET_HOOKS)
    return names[hooknum] if 0 <= hooknum < len(names) else f"hook{hooknum}"


def family_name(pf: int) -> str:
    return FAMILIES.get(pf, f"pf{pf}")


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetfilterHook:
    """One entry of a hook list, as nfnl_hook_dump_one() describes it."""

    family: str  # ipv4, ipv6, arp, bridge, netdev
    hooknum: int
    hook: str  # prerouting, input, forward, output, postrouting; ingress, egress
    priority: int
    function: str | None  # %ps of ops->hook; "0x..." when no symbol covers it; None: no kallsyms
    module: str | None  # the module whose symbol it is; None for built-in code
    hook_type: str  # nftables, flowtable, bpf, or native (registered by kernel code directly)
    device: str | None = None  # netdev hooks
    table: str | None = None  # nftables and flowtable hooks
    chain: str | None = None  # the nf_tables chain or flowtable name
    prog_id: int | None = None  # bpf hooks
    netns: int | None = None  # the namespace's inode number, where the memory view read it

    @property
    def unresolved(self) -> bool:
        return self.function is not None and self.function.startswith("0x")


@dataclass(frozen=True)
class BpfNetfilterHook:
    """A BPF netfilter link: a program on one hook list, and who keeps it there."""

    link_id: int
    prog_id: int
    prog_name: str | None  # None: the program could not be read
    family: str
    hooknum: int
    hook: str
    priority: int
    defrag: bool  # BPF_F_NETFILTER_IP_DEFRAG: runs on reassembled packets
    owners: tuple[Owner, ...]  # processes holding the link
    pins: tuple[str, ...]  # the link's pins in bpffs
    in_hook_lists: bool | None = None  # seen in the dumped lists; None: they were not read


@dataclass(frozen=True)
class NetfilterViews:
    """What the hooks can be checked against, and which views were read."""

    modules: tuple[str, ...] | None  # /proc/modules; () without module support; None: unread
    hook_lists_read: bool
    bpf_links_read: bool
    hook_lists_from: str | None = None  # "nfnetlink" or "kernel memory"
    dump_unavailable: str | None = None  # why the nfnetlink dump could not be used


# --- parsers: pure functions over decoded messages ----------------------------------------------


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _chain_info(info: Any) -> dict[str, Any]:
    """NFNLA_HOOK_CHAIN_INFO: the nftables chain, flowtable or BPF program behind a hook."""
    if info is None:
        return {"hook_type": "native"}
    kind = info.get_attr("NFNLA_HOOK_INFO_TYPE")
    desc = info.get_attr("NFNLA_HOOK_INFO_DESC")
    if kind == NFNL_HOOK_TYPE_BPF:
        return {"hook_type": "bpf", "prog_id": desc.get_attr("NFNLA_HOOK_BPF_ID") if desc else None}
    return {
        "hook_type": CHAIN_KINDS.get(kind, f"type{kind}"),
        "table": desc.get_attr("NFNLA_CHAIN_TABLE") if desc else None,
        "chain": desc.get_attr("NFNLA_CHAIN_NAME") if desc else None,
    }


def parse_hook(msg: Any, device: str | None = None) -> NetfilterHook:
    """One NFNL_MSG_HOOK_GET reply (a pyroute2 nfhook_msg); `device` is the netdev one the
    request named (replies do not repeat it)."""
    pf = msg["nfgen_family"]
    hooknum = msg.get_attr("NFNLA_HOOK_HOOKNUM")
    priority = msg.get_attr("NFNLA_HOOK_PRIORITY")
    if hooknum is None or priority is None:
        raise ValueError("a hook without NFNLA_HOOK_HOOKNUM or NFNLA_HOOK_PRIORITY")
    return NetfilterHook(
        family=family_name(pf),
        hooknum=hooknum,
        hook=hook_name(pf, hooknum),
        priority=_signed32(priority),
        function=msg.get_attr("NFNLA_HOOK_FUNCTION_NAME"),
        module=msg.get_attr("NFNLA_HOOK_MODULE_NAME"),
        device=device,
        **_chain_info(msg.get_attr("NFNLA_HOOK_CHAIN_INFO")),
    )


def config_option(config: str, name: str) -> str | None:
    """ "y", "m", "not set" or None (not mentioned) for one option of a kernel .config."""
    for line in config.splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
        if line.strip() == f"# {name} is not set":
            return "not set"
    return None


def dump_failure(exc: HookDumpError, built: str | None) -> str:
    """A plain reason for a hook dump the kernel refused; `built` is the .config's answer."""
    if exc.errno != errno.EINVAL:
        return str(exc)
    # nfnetlink_rcv_msg() answers EINVAL for a subsystem nobody registered (after trying to
    # load the module "nfnetlink-subsys-12" where there are modules).
    if built == "not set":
        return (
            f"nfnetlink hook dump not supported by this kernel ({CONFIG_OPTION} not set): "
            f"{exc.reason}"
        )
    if built == "m":
        return (
            f"nfnetlink hook dump unavailable: module nfnetlink_hook ({CONFIG_OPTION}=m) is not "
            f"loaded and was not auto-loaded: {exc.reason}"
        )
    return (
        "nfnetlink hook dump not supported by this kernel (no NFNL_SUBSYS_HOOK: nfnetlink_hook "
        f"not built or not loaded): {exc.reason}"
    )


# --- collect ------------------------------------------------------------------------------------


def _kernel_config(kernel: Kernel) -> str | None:
    """The running kernel's .config: /proc/config.gz, else /boot/config-<release>."""
    try:
        return gzip.decompress(kernel.path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    try:
        release = kernel.read_text("/proc/sys/kernel/osrelease").strip()
        return kernel.read_text(f"/boot/config-{release}")
    except KernelAccessError:
        return None


def _proc_modules(r: Reading) -> list[ProcModule] | None:
    try:
        text = r.kernel.read_text(PROC_MODULES)
    except KernelAccessError as exc:
        if is_enoent(exc):
            return []  # no module support: no hook can come from a module
        r.gap("module list for hook owners (/proc/modules)", str(exc))
        return None
    return parse_proc_modules(text)


def _memory_hook(
    entry: HookEntry, symbols: SymbolTable, modules: Sequence[ProcModule]
) -> NetfilterHook:
    function, module = function_name(entry.hook, symbols, modules)
    return NetfilterHook(
        family=family_name(entry.pf),
        hooknum=entry.hooknum,
        hook=hook_name(entry.pf, entry.hooknum),
        priority=entry.priority if entry.priority is not None else 0,
        function=function,
        module=module,
        # nf_tables runs every base chain through nft_do_chain_<family>
        hook_type="nftables" if function.startswith("nft_do_chain") else "native",
        netns=entry.netns,
    )


def _read_hook_lists(
    r: Reading, modules: Sequence[ProcModule] | None
) -> tuple[list[NetfilterHook] | None, str | None, str | None]:
    """(hooks, where from, why the dump was not used): the nfnetlink dump where the kernel has
    it, else kernel memory; (None, None, ...) with a gap when neither can be read."""
    dump_gaps: list[tuple[str, str]] = []
    hooks = _dump_hook_lists(r, dump_gaps)
    if hooks is not None:
        return hooks, "nfnetlink", None
    unavailable = "; ".join(reason for _, reason in dump_gaps)
    try:
        kernel = r.kernel
        head = kernel.symbol_address("net_namespace_list")
        entries = read_hooks(kernel.memory(), head, kernel.vmlinux_btf)
    except KernelAccessError as exc:
        for what, reason in dump_gaps:
            r.gap(what, reason)
        r.gap("netfilter hook lists (kernel memory)", str(exc))
        return None, None, unavailable
    symbols = r.kernel.kallsyms
    found = [_memory_hook(e, symbols, modules or []) for e in entries]
    return found, "kernel memory", unavailable


def _dump_list(
    sock: HookSocket, r: Reading, pf: int, hooknum: int, device: str | None = None
) -> list[NetfilterHook]:
    try:
        msgs = sock.dump(pf, hooknum, device)
    except HookDumpError as exc:
        if exc.errno not in ABSENT_LIST:
            r.gap(f"netfilter {family_name(pf)} {hook_name(pf, hooknum)} hooks", str(exc))
        return []
    try:
        return [parse_hook(m, device) for m in msgs]
    except ValueError as exc:
        r.gap(f"netfilter {family_name(pf)} {hook_name(pf, hooknum)} hooks", str(exc))
        return []


def _devices(r: Reading) -> list[str]:
    """This network namespace's devices: each has its own ingress and egress lists."""
    try:
        return [name for _index, name in socket.if_nameindex()]
    except OSError as exc:
        r.gap("netfilter netdev hooks", f"if_nameindex(): {oserror_reason(exc)}")
        return []


def _dump_hook_lists(r: Reading, failed: list[tuple[str, str]]) -> list[NetfilterHook] | None:
    """Every hook list of this network namespace; None (the reason added to `failed`) if the
    kernel cannot dump them."""
    try:
        with HookSocket() as sock:
            first_pf, first_hook = HOOK_LISTS[0]
            hooks = [parse_hook(m) for m in sock.dump(first_pf, first_hook)]
            for pf, hooknum in HOOK_LISTS[1:]:
                hooks += _dump_list(sock, r, pf, hooknum)
            for device in _devices(r):
                for hooknum in NETDEV_HOOKS:
                    hooks += _dump_list(sock, r, NFPROTO_NETDEV, hooknum, device)
            return hooks
    except HookDumpError as exc:
        built = config_option(_kernel_config(r.kernel) or "", CONFIG_OPTION)
        failed.append(("netfilter hook lists (nfnetlink hook dump)", dump_failure(exc, built)))
    except ValueError as exc:
        failed.append(("netfilter hook lists (nfnetlink hook dump)", str(exc)))
    return None


def _prog_name(prog_id: int) -> str | None:
    try:
        fd = bpf.fd_by_id(bpf.BPF_PROG_GET_FD_BY_ID, prog_id, "PROG_GET_FD_BY_ID")
    except bpf.BpfError:
        return None  # gone since the link was read: the ebpf surface names what is left
    try:
        return objs.prog_info(fd).name
    except bpf.BpfError:
        return None
    finally:
        os.close(fd)


def _link_owners(owners: Owners, link_id: int) -> tuple[Owner, ...]:
    owned = []
    for holder in owners.holders.get(("link", link_id), []):
        p = holder.process
        missing = p.exe is not None and not p.exe_deleted and not os.path.exists(p.exe)
        owned.append(Owner(p.pid, p.comm, p.exe, p.exe_deleted, missing, holder.fd))
    return tuple(owned)


def _bpf_hook(
    link: objs.LinkInfo, nf: objs.NetfilterAttach, owners: Owners, listed: set[int] | None
) -> BpfNetfilterHook:
    return BpfNetfilterHook(
        link_id=link.link_id,
        prog_id=link.prog_id,
        prog_name=_prog_name(link.prog_id),
        family=family_name(nf.pf),
        hooknum=nf.hooknum,
        hook=hook_name(nf.pf, nf.hooknum),
        priority=nf.priority,
        defrag=bool(nf.flags & 1),
        owners=_link_owners(owners, link.link_id),
        pins=tuple(owners.pins.get(("link", link.link_id), [])),
        in_hook_lists=None if listed is None else link.prog_id in listed,
    )


def _bpf_hooks(r: Reading, hooks: list[NetfilterHook] | None) -> list[BpfNetfilterHook] | None:
    try:
        links = [(link, link.netfilter) for link in objs.all_links() if link.netfilter]
    except bpf.BpfError as exc:
        r.gap("BPF netfilter links", str(exc))
        return None
    if not links:
        return []
    owners = find_owners(r.kernel.root)
    for err in owners.errors:
        r.gap("bpffs pin", err)
    listed = None if hooks is None else {h.prog_id for h in hooks if h.prog_id is not None}
    return [_bpf_hook(link, nf, owners, listed) for link, nf in links]


class NetfilterSurface:
    name = SURFACE
    title = "Netfilter hooks"

    def collect(self, kernel: Kernel) -> SurfaceState:
        r = Reading(SURFACE, kernel)
        if not kernel.live:
            r.gap("netfilter hooks", "nfnetlink and bpf(2) read only the live kernel")
            return SurfaceState(SURFACE, (), gaps=tuple(r.gaps))
        listed = _proc_modules(r)
        modules = None if listed is None else tuple(m.name for m in listed)
        hooks, source, unavailable = _read_hook_lists(r, listed)
        links = _bpf_hooks(r, hooks)
        views = NetfilterViews(modules, hooks is not None, links is not None, source, unavailable)
        r.records += [*(hooks or []), *(links or []), views]
        counts = {
            "hooks": len(hooks or []),
            **{t: sum(h.hook_type == t for h in hooks or []) for t in ("native", "nftables")},
            "bpf_links": len(links or []),
            "hidden": sum(_hidden(h, modules) is not None for h in hooks or []),
        }
        return SurfaceState(SURFACE, tuple(r.records), counts, tuple(r.gaps))

    def assess(self, state: SurfaceState) -> list[Finding]:
        return assess_records(state.records)


# --- assess -------------------------------------------------------------------------------------


def _hidden(hook: NetfilterHook, modules: Sequence[str] | None) -> tuple[Severity, str] | None:
    """Why a hook's code belongs to nothing visible, or None."""
    if hook.unresolved:
        return Severity.CRITICAL, (
            f"runs code at {hook.function}, which no kernel or module symbol covers: the code "
            "of a module that took itself off the lists, or of memory injected into the kernel"
        )
    if hook.module and modules is not None and hook.module not in modules:
        return Severity.HIGH, (
            f"runs {hook.function} of module {hook.module}, which /proc/modules does not list: "
            "a module that hid itself after hooking"
        )
    return None


def _hook_subject(family: str, hook: str, priority: int, what: str) -> str:
    return f"netfilter {family} {hook} priority {priority}: {what}"


def _hook_evidence(hook: NetfilterHook) -> Evidence:
    return {
        "family": hook.family,
        "hooknum": hook.hooknum,
        "hook": hook.hook,
        "priority": hook.priority,
        "function": hook.function,
        "module": hook.module,
        "hook_type": hook.hook_type,
        "device": hook.device,
        "table": hook.table,
        "chain": hook.chain,
        "prog_id": hook.prog_id,
    }


def assess_hook(hook: NetfilterHook, modules: Sequence[str] | None) -> list[Finding]:
    hidden = _hidden(hook, modules)
    if hidden is None:
        return []
    severity, why = hidden
    return [
        Finding(
            SURFACE,
            "hidden-netfilter-hook",
            severity,
            _hook_subject(hook.family, hook.hook, hook.priority, hook.function or "?"),
            f"A netfilter hook on {hook.family} {hook.hook} {why}.",
            Disposition.TAMPERING,
            ROOTKIT,
            _hook_evidence(hook),
        )
    ]


def _bpf_evidence(hook: BpfNetfilterHook) -> Evidence:
    return {
        "link_id": hook.link_id,
        "prog_id": hook.prog_id,
        "name": hook.prog_name,
        "family": hook.family,
        "hooknum": hook.hooknum,
        "hook": hook.hook,
        "priority": hook.priority,
        "owners": [f"{o.pid} {o.exe or o.comm}" for o in hook.owners],
        "pins": list(hook.pins),
    }


def assess_bpf_hook(hook: BpfNetfilterHook) -> list[Finding]:
    prog = f"BPF prog {hook.prog_id} ({hook.prog_name or 'unnamed'}), link {hook.link_id}"
    subject = _hook_subject(hook.family, hook.hook, hook.priority, prog)
    kept_by = [f"pid {o.pid} {o.exe or o.comm}" for o in hook.owners]
    kept_by += [f"pin {pin}" for pin in hook.pins]
    if kept_by:  # a firewall or traffic tool: named, not judged
        return [
            Finding(
                SURFACE,
                "netfilter-bpf-hook",
                Severity.INFO,
                subject,
                f"{prog} sees every {hook.family} packet at the {hook.hook} hook; kept by "
                f"{', '.join(kept_by)}.",
                Disposition.EXPLAINED,
                None,
                _bpf_evidence(hook),
            )
        ]
    return [
        Finding(
            SURFACE,
            "unowned-netfilter-bpf",
            Severity.HIGH,
            subject,
            f"{prog} sees every {hook.family} packet at the {hook.hook} hook, yet no visible "
            "process holds its link and no pin keeps it: a link dies with its last fd or pin, "
            "so its holder is hidden (a packet trigger is how backdoors wait unseen).",
            Disposition.SUSPICIOUS,
            ROOTKIT,
            _bpf_evidence(hook),
        )
    ]


def assess_views(
    hooks: Sequence[NetfilterHook], links: Sequence[BpfNetfilterHook]
) -> list[Finding]:
    """A BPF program in the hook lists that no BPF netfilter link names (links were read)."""
    linked = {link.prog_id for link in links}
    return [
        Finding(
            SURFACE,
            "netfilter-hook-view-mismatch",
            Severity.MEDIUM,
            _hook_subject(h.family, h.hook, h.priority, f"BPF prog {h.prog_id}"),
            f"The {h.family} {h.hook} hook list runs BPF prog {h.prog_id}, but no BPF netfilter "
            "link names it: the link list is being hidden, or the hook changed while we read.",
            Disposition.SUSPICIOUS,
            ROOTKIT,
            _hook_evidence(h),
        )
        for h in hooks
        if h.hook_type == "bpf" and h.prog_id is not None and h.prog_id not in linked
    ]


def assess_records(records: Sequence[object]) -> list[Finding]:
    views = one_of(records, NetfilterViews)
    modules = views.modules if views is not None else None
    hooks = records_of(records, NetfilterHook)
    links = records_of(records, BpfNetfilterHook)
    found = [f for h in hooks for f in assess_hook(h, modules)]
    found += [f for link in links for f in assess_bpf_hook(link)]
    if views is not None and views.bpf_links_read:
        found += assess_views(hooks, links)
    return found


__all__ = [
    "BpfNetfilterHook",
    "NetfilterHook",
    "NetfilterSurface",
    "NetfilterViews",
    "assess_bpf_hook",
    "assess_hook",
    "assess_records",
    "config_option",
    "dump_failure",
    "family_name",
    "hook_name",
    "parse_hook",
]
