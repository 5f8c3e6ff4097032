"""The netfilter surface's parser and assessment on nfnetlink hook messages.

The messages are HAND-BUILT: the 6.18 "fc" machine's kernel lacks the hook dump
(CONFIG_NETFILTER_NETLINK_HOOK is not set; the request is refused with EINVAL), so no reply
could be captured. They are encoded with pyroute2's own encoder in the layout
nfnl_hook_dump_one() writes (net/netfilter/nfnetlink_hook.c, read through the search tool:
FUNCTION_NAME and MODULE_NAME from "%ps" split at " [", HOOKNUM and PRIORITY as be32, a nested
CHAIN_INFO with INFO_TYPE first and then INFO_DESC, nested attributes flagged NLA_F_NESTED) and
decoded again, so the parser reads exactly what pyroute2 gives it from the socket. The lab (a
stock Debian 6.1 guest with nfnetlink_hook) will give real ones.
"""

from __future__ import annotations

import errno
import struct
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink import NLA_F_NESTED, NLM_F_MULTI

from patchguard.findings import Disposition, Finding, Severity
from patchguard.kernel import Kernel
from patchguard.kernel.nfnetlink_codec import dump_request, nfhook_msg
from patchguard.kernel.nfnetlink_hook import (
    HOOK_GET,
    NFNL_HOOK_TYPE_BPF,
    NFNL_HOOK_TYPE_NFT_FLOWTABLE,
    NFNL_HOOK_TYPE_NFTABLES,
    HookDumpError,
)
from patchguard.surfaces.base import Status
from patchguard.surfaces.ebpf import Owner
from patchguard.surfaces.netfilter import (
    BpfNetfilterHook,
    NetfilterHook,
    NetfilterRecords,
    NetfilterSurface,
    NetfilterViews,
    assess_records,
    config_option,
    dump_failure,
    hook_name,
    parse_hook,
)

NFPROTO_IPV4, NFPROTO_NETDEV, NFPROTO_ARP, NFPROTO_IPV6 = 2, 5, 3, 10
NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT = 0, 3


def reply(family: int, attrs: list[Any]) -> Any:
    """Encode a hook message as the kernel would send it, then decode it as the socket does."""
    msg = nfhook_msg()
    msg["header"]["type"] = HOOK_GET
    msg["header"]["flags"] = NLM_F_MULTI
    msg["nfgen_family"] = family
    msg["attrs"] = attrs
    msg.encode()
    decoded = nfhook_msg(msg.data)
    decoded.decode()
    return decoded


def hook_attrs(function: str, hooknum: int, priority: int, module: str | None = None) -> list[Any]:
    attrs: list[Any] = [["NFNLA_HOOK_FUNCTION_NAME", function]]
    if module is not None:  # only when "%ps" ended in " [module]"
        attrs.append(["NFNLA_HOOK_MODULE_NAME", module])
    attrs += [["NFNLA_HOOK_HOOKNUM", hooknum], ["NFNLA_HOOK_PRIORITY", priority & 0xFFFFFFFF]]
    return attrs


def chain_info(kind: int, desc: list[Any]) -> Any:
    inner = ("NFNLA_HOOK_INFO_DESC", {"attrs": desc}, NLA_F_NESTED)
    info = {"attrs": [["NFNLA_HOOK_INFO_TYPE", kind], inner]}
    return ("NFNLA_HOOK_CHAIN_INFO", info, NLA_F_NESTED)


def nft_chain(table: str, chain: str, family: int, kind: int = NFNL_HOOK_TYPE_NFTABLES) -> Any:
    desc = [["NFNLA_CHAIN_TABLE", table], ["NFNLA_CHAIN_NAME", chain]]
    return chain_info(kind, [*desc, ["NFNLA_CHAIN_FAMILY", family]])


def hook(**fields: Any) -> NetfilterHook:
    base: dict[str, Any] = {
        "family": "ipv4",
        "hooknum": NF_INET_LOCAL_OUT,
        "hook": "output",
        "priority": 0,
        "function": "nf_hook_fn",
        "module": None,
        "hook_type": "native",
    }
    return NetfilterHook(**{**base, **fields})


def bpf_hook(owners: tuple[Owner, ...] = (), pins: tuple[str, ...] = ()) -> BpfNetfilterHook:
    return BpfNetfilterHook(
        7, 42, "fw_out", "ipv4", NF_INET_LOCAL_OUT, "output", 100, False, owners, pins
    )


SHELL = Owner(812, "fwd", "/usr/sbin/fwd", False, False, 5)


def assess_mixed(records: list[object]) -> list[Finding]:
    return assess_records(NetfilterRecords.of(records))


VIEWS = NetfilterViews(("nf_tables", "nf_nat", "nf_conntrack"), True, True)


# --- the request --------------------------------------------------------------------------------


def test_dump_request_is_what_nfnl_hook_get_wants() -> None:
    """nfnl_hook_dump_start() reads the hook number with ntohl(nla_get_be32()), and wants
    NFNLA_HOOK_DEV for netdev (EINVAL without it)."""
    msg = dump_request(NFPROTO_NETDEV, 1, "eth0")
    msg["header"]["type"] = HOOK_GET
    msg.encode()
    data = bytes(msg.data)
    assert struct.unpack_from("=H", data, 4)[0] == 12 << 8  # NFNL_SUBSYS_HOOK, NFNL_MSG_HOOK_GET
    assert data[16] == NFPROTO_NETDEV  # nfgenmsg.nfgen_family
    assert struct.pack("=HH", 8, 1) + struct.pack(">I", 1) in data  # NFNLA_HOOK_HOOKNUM
    assert struct.pack("=HH", 9, 3) + b"eth0\0" in data  # NFNLA_HOOK_DEV


# --- parse --------------------------------------------------------------------------------------


def test_nftables_chain_hook() -> None:
    attrs = hook_attrs("nft_do_chain_inet", NF_INET_LOCAL_OUT, -150, "nf_tables")
    parsed = parse_hook(reply(NFPROTO_IPV4, [*attrs, nft_chain("fw", "out", 1)]))
    assert parsed == NetfilterHook(
        family="ipv4",
        hooknum=3,
        hook="output",
        priority=-150,  # sent as the kernel's int through htonl()
        function="nft_do_chain_inet",
        module="nf_tables",
        hook_type="nftables",
        table="fw",
        chain="out",
    )
    assert not parsed.unresolved


def test_bpf_hook_names_its_program() -> None:
    info = chain_info(NFNL_HOOK_TYPE_BPF, [["NFNLA_HOOK_BPF_ID", 42]])
    parsed = parse_hook(reply(NFPROTO_IPV6, [*hook_attrs("nf_hook_run_bpf", 0, 77), info]))
    assert (parsed.family, parsed.hook, parsed.priority) == ("ipv6", "prerouting", 77)
    assert (parsed.hook_type, parsed.prog_id, parsed.module, parsed.table) == (
        "bpf",
        42,
        None,
        None,
    )


def test_flowtable_and_native_hooks() -> None:
    flow = nft_chain("fw", "ft0", 1, NFNL_HOOK_TYPE_NFT_FLOWTABLE)
    attrs = hook_attrs("nf_flow_offload_ip_hook", 0, 0, "nf_flow_table")
    parsed = parse_hook(reply(NFPROTO_NETDEV, [*attrs, flow]), device="eth0")
    assert (parsed.family, parsed.hook, parsed.device) == ("netdev", "ingress", "eth0")
    assert (parsed.hook_type, parsed.table, parsed.chain) == ("flowtable", "fw", "ft0")
    # Registered by kernel code directly (conntrack): no CHAIN_INFO at all.
    native = parse_hook(reply(NFPROTO_IPV4, hook_attrs("ipv4_conntrack_in", 0, -200, "nf_ct")))
    assert (native.hook_type, native.module, native.priority) == ("native", "nf_ct", -200)


def test_unresolved_function_is_a_bare_address() -> None:
    """A hidden module's hook: "%ps" finds no symbol and prints the address. Rootkits hook
    first (NF_IP_PRI_FIRST + n, near INT_MIN) to see packets before any firewall."""
    nf_ip_pri_first = -(2**31)
    attrs = hook_attrs("0xffffffffc0a42000", 1, nf_ip_pri_first + 7)
    parsed = parse_hook(reply(NFPROTO_IPV4, attrs))
    assert parsed.unresolved and parsed.module is None
    assert (parsed.hook, parsed.priority) == ("input", -2147483641)


def test_kernel_without_kallsyms_sends_no_function() -> None:
    attrs = [["NFNLA_HOOK_HOOKNUM", 1], ["NFNLA_HOOK_PRIORITY", 0]]
    parsed = parse_hook(reply(NFPROTO_IPV4, attrs))
    assert parsed.function is None and not parsed.unresolved
    assert assess_mixed([parsed, VIEWS]) == []


def test_hook_without_number_is_rejected() -> None:
    with pytest.raises(ValueError, match="NFNLA_HOOK_HOOKNUM"):
        parse_hook(reply(NFPROTO_IPV4, [["NFNLA_HOOK_FUNCTION_NAME", "f"]]))


def test_hook_names() -> None:
    assert [hook_name(NFPROTO_IPV4, n) for n in range(5)] == [
        "prerouting",
        "input",
        "forward",
        "output",
        "postrouting",
    ]
    assert [hook_name(NFPROTO_ARP, n) for n in range(3)] == ["input", "output", "forward"]
    assert [hook_name(NFPROTO_NETDEV, n) for n in range(2)] == ["ingress", "egress"]
    assert hook_name(NFPROTO_IPV4, 9) == "hook9"


# --- assess -------------------------------------------------------------------------------------


def test_hook_at_an_address_no_symbol_covers_is_critical_tampering() -> None:
    rootkit = hook(function="0xffffffffc0a42000", hook="prerouting", hooknum=0, priority=-300)
    (found,) = assess_mixed([rootkit, VIEWS])
    assert (found.technique, found.severity) == ("hidden-netfilter-hook", Severity.CRITICAL)
    assert found.disposition is Disposition.TAMPERING and found.attack_id == "T1014"
    assert found.subject == "netfilter ipv4 prerouting priority -300: 0xffffffffc0a42000"
    assert found.evidence["function"] == "0xffffffffc0a42000"
    assert (found.evidence["hook"], found.evidence["hooknum"]) == ("prerouting", 0)
    assert found.evidence["priority"] == -300


def test_hook_of_an_unlisted_module_is_tampering() -> None:
    (found,) = assess_mixed([hook(function="magic_packet", module="rkit"), VIEWS])
    assert (found.technique, found.severity) == ("hidden-netfilter-hook", Severity.HIGH)
    assert "rkit" in found.summary and found.evidence["module"] == "rkit"


def test_listed_modules_and_builtin_hooks_are_clean() -> None:
    records = [
        hook(function="nft_do_chain_ipv4", module="nf_tables", hook_type="nftables"),
        hook(function="ipv4_confirm"),
        VIEWS,
    ]
    assert assess_mixed(records) == []


def test_module_names_cannot_be_checked_without_a_module_list() -> None:
    unread = NetfilterViews(None, True, True)
    assert assess_mixed([hook(function="magic_packet", module="rkit"), unread]) == []
    # ... but an address no symbol covers needs no module list.
    assert assess_mixed([hook(function="0xffffffffc0a42000"), unread])
    # A kernel without module support lists none: any module name is one nobody lists.
    no_modules = NetfilterViews((), True, True)
    assert assess_mixed([hook(function="magic_packet", module="rkit"), no_modules])


def test_bpf_hook_with_an_owner_or_a_pin_is_named_not_judged() -> None:
    for record in (bpf_hook(owners=(SHELL,)), bpf_hook(pins=("/sys/fs/bpf/fw",))):
        (found,) = assess_mixed([record, VIEWS])
        assert (found.technique, found.severity) == ("netfilter-bpf-hook", Severity.INFO)
        assert found.disposition is Disposition.EXPLAINED
        assert found.subject == "netfilter ipv4 output priority 100: BPF prog 42 (fw_out), link 7"
    (owned,) = assess_mixed([bpf_hook(owners=(SHELL,)), VIEWS])
    assert owned.evidence["owners"] == ["812 /usr/sbin/fwd"]


def test_bpf_hook_nothing_visible_keeps_is_suspicious() -> None:
    (found,) = assess_mixed([bpf_hook(), VIEWS])
    assert (found.technique, found.severity) == ("unowned-netfilter-bpf", Severity.HIGH)
    assert found.disposition is Disposition.SUSPICIOUS
    assert found.evidence["prog_id"] == 42 and found.evidence["owners"] == []


def test_bpf_program_in_the_hook_lists_without_a_link() -> None:
    dumped = hook(function="nf_hook_run_bpf", hook_type="bpf", prog_id=42, priority=100)
    (found,) = assess_mixed([dumped, VIEWS])
    assert (found.technique, found.severity) == ("netfilter-hook-view-mismatch", Severity.MEDIUM)
    linked = [f.technique for f in assess_mixed([dumped, bpf_hook(owners=(SHELL,)), VIEWS])]
    assert linked == ["netfilter-bpf-hook"]
    # Links that could not be enumerated prove nothing.
    assert assess_mixed([dumped, NetfilterViews((), True, False)]) == []


# --- why the dump failed ------------------------------------------------------------------------


def test_config_option() -> None:
    config = "CONFIG_NETFILTER_NETLINK_QUEUE=y\n# CONFIG_NETFILTER_NETLINK_HOOK is not set\n"
    assert config_option(config, "CONFIG_NETFILTER_NETLINK_HOOK") == "not set"
    assert (
        config_option("CONFIG_NETFILTER_NETLINK_HOOK=m\n", "CONFIG_NETFILTER_NETLINK_HOOK") == "m"
    )
    assert config_option(config, "CONFIG_NETFILTER_NETLINK_QUEUE") == "y"
    assert config_option(config, "CONFIG_NETFILTER_NETLINK") is None


def test_dump_failure_reasons() -> None:
    einval = HookDumpError("nfnetlink hook dump (family 2, hook 0)", errno.EINVAL)
    assert dump_failure(einval, "not set") == (
        "nfnetlink hook dump not supported by this kernel "
        "(CONFIG_NETFILTER_NETLINK_HOOK not set): rejected as invalid by this kernel (EINVAL)"
    )
    assert "module nfnetlink_hook" in dump_failure(einval, "m")
    assert "NFNL_SUBSYS_HOOK" in dump_failure(einval, None)
    eperm = HookDumpError("nfnetlink hook dump (family 2, hook 0)", errno.EPERM)
    assert dump_failure(eperm, "y").endswith("(EPERM)")


def test_captured_tree_is_unavailable_with_a_reason(tmp_path: Path) -> None:
    state = NetfilterSurface().collect(Kernel(tmp_path))
    assert state.status is Status.UNAVAILABLE and not state.records
    assert [g.reason for g in state.gaps] == ["nfnetlink and bpf(2) read only the live kernel"]
