"""Parsers, pure functions over decoded nfnetlink messages and the kernel config."""

from __future__ import annotations

import errno
from typing import Any

from patchguard.kernel.nfnetlink_hook import (
    NFNL_HOOK_TYPE_BPF,
    HookDumpError,
)
from patchguard.surfaces.netfilter.paths import CHAIN_KINDS, CONFIG_OPTION, family_name, hook_name
from patchguard.surfaces.netfilter.records import NetfilterHook

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
