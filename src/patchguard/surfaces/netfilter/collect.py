"""Reading the hook lists (nfnetlink dump or kernel memory) and the BPF netfilter links."""

from __future__ import annotations

import gzip
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from patchguard.kernel.bpf import objects as objs
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.owners import Owners, find_owners
from patchguard.kernel.errors import KernelAccessError, is_enoent, oserror_reason
from patchguard.kernel.nf_hooks import HookEntry, read_hooks
from patchguard.kernel.nfnetlink_hook import (
    HookDumpError,
    HookSocket,
)
from patchguard.kernel.proc_modules import (
    Named,
    ProcModule,
    function_name,
    parse_proc_modules,
)
from patchguard.surfaces.ebpf import Owner
from patchguard.surfaces.reading import Reading

if TYPE_CHECKING:
    from patchguard.kernel import Kernel
from patchguard.surfaces.netfilter.parse import config_option, dump_failure, parse_hook
from patchguard.surfaces.netfilter.paths import (
    ABSENT_LIST,
    CONFIG_OPTION,
    HOOK_LISTS,
    NETDEV_HOOKS,
    NFPROTO_NETDEV,
    NOT_BUILT,
    PROC_MODULES,
    family_name,
    hook_name,
)
from patchguard.surfaces.netfilter.records import BpfNetfilterHook, NetfilterHook

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


def _memory_hook(entry: HookEntry, names: Named) -> NetfilterHook:
    function, module = function_name(entry.hook, names)
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
    names = r.kernel.attributor()
    found = [_memory_hook(e, names) for e in entries]
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
    config = _kernel_config(r.kernel)
    if config is not None and config_option(config, CONFIG_OPTION) == "not set":
        # Built without the subsystem: the kernel would answer EINVAL; not asking spares
        # opening a netlink socket and importing pyroute2 (a tenth of a scan's process).
        failed.append(("netfilter hook lists (nfnetlink hook dump)", NOT_BUILT))
        return None
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
        built = config_option(config or "", CONFIG_OPTION)
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
