"""Findings for one eBPF program: rootkit helpers, hooks on paths rootkits use, probes on
secret-handling libraries, packet rewriting, covert network triggers, orphans and deleted
loaders. Each finding carries the program's identity, attach points, owners and what keeps it
alive as evidence."""

from __future__ import annotations

from dataclasses import dataclass

from patchguard.findings import Disposition, Evidence, Finding, Severity
from patchguard.surfaces.ebpf.records import Attachment, BpfProgram

NAME = "ebpf"
ROOTKIT = "T1014"
TRAFFIC_SIGNALING = "T1205"
TRANSMITTED_DATA = "T1565.002"  # Data Manipulation: Transmitted Data Manipulation

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
# Matched against every spelling of a target: `tracepoint:sched_process_exec`,
# `sched:sched_process_exec` and the bare `sched_process_exec` are one hook.
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
    "sched_process_exec",
    "vfs_",
    "filldir",
    "iterate_dir",
    "tcp4_seq_show",
    "tcp6_seq_show",
    "do_filp_open",
    "openat",
)
# Network events that fire on packets from outside, or carry their contents: a program there
# can wait for a crafted packet (a reset, a bad checksum, a magic payload) and act on it.
# Trace events (tracepoints: perf names them without their category, `tcp_receive_reset`)...
NETWORK_TRACEPOINTS = (
    "tcp:",
    "udp:",
    "icmp:",
    "skb:",
    "net:",
    "napi:",
    "sock:inet_sock_set_state",
    "tcp_",
    "udp_",
    "icmp_",
    "kfree_skb",
    "consume_skb",
    "skb_copy_datagram",
    "napi_gro_",
    "napi_poll",
    "netif_receive_skb",
    "netif_rx",
    "net_dev_",
    "inet_sock_set_state",
)
# ...and the kernel functions of the receive path (kprobes, fentry).
NETWORK_FUNCTIONS = (
    "napi_gro_receive",
    "netif_receive_skb",
    "__netif_receive_skb",
    "kfree_skb",
    "sk_skb_reason_drop",
    "ip_rcv",
    "ip6_rcv",
    "ipv6_rcv",
    "icmp_rcv",
    "icmpv6_rcv",
    "tcp_v4_rcv",
    "tcp_v6_rcv",
    "tcp_v4_do_rcv",
    "tcp_rcv_established",
    "tcp_validate_incoming",
    "tcp_reset",
    "udp_rcv",
    "udpv6_rcv",
    "__udp4_lib_rcv",
    "udp_queue_rcv_skb",
    "packet_rcv",
    "tpacket_rcv",
)
TRACEPOINT_KINDS = ("tracepoint", "raw_tracepoint")
# Program types that see every packet of a device or a raw socket.
PACKET_PROGRAM_TYPES = {
    "xdp": "an XDP program sees every packet the device receives, before the kernel does",
    "sched_cls": "a tc classifier sees every packet through its device",
    "sched_act": "a tc action sees every packet through its device",
    "socket_filter": "a socket filter sees every packet its (raw) socket receives",
    "netfilter": "a netfilter program sees every packet on its hook",
    "flow_dissector": "a flow dissector parses every packet its network namespace receives",
}
# Program types a socket keeps once attached (SO_ATTACH_BPF, SO_ATTACH_REUSEPORT_EBPF): the
# kernel tells no one which socket holds them.
SOCKET_HELD = {
    "socket_filter": "a socket filter is kept by the socket it was attached to (SO_ATTACH_BPF)",
    "sk_reuseport": "a reuseport program is kept by its socket group (SO_ATTACH_REUSEPORT_EBPF)",
}
# Helpers that change, move or redirect packets (the kernel's function names, and the map
# redirect operations the verifier calls in place of bpf_redirect_map).
PACKET_HELPERS = {
    "bpf_skb_store_bytes": "rewrites packet bytes",
    "bpf_xdp_store_bytes": "rewrites packet bytes",
    "bpf_skb_change_tail": "grows or cuts packets",
    "sk_skb_change_tail": "grows or cuts packets",
    "bpf_skb_change_head": "grows packets at the front",
    "sk_skb_change_head": "grows packets at the front",
    "bpf_skb_adjust_room": "inserts or removes headers",
    "sk_skb_adjust_room": "inserts or removes headers",
    "bpf_skb_change_proto": "changes the packet's protocol",
    "bpf_skb_vlan_push": "inserts VLAN tags",
    "bpf_skb_vlan_pop": "removes VLAN tags",
    "bpf_l3_csum_replace": "fixes IP checksums after rewriting",
    "bpf_l4_csum_replace": "fixes TCP/UDP checksums after rewriting",
    "bpf_csum_diff": "computes checksums for rewritten packets",
    "bpf_xdp_adjust_head": "moves the packet start (adds or strips headers)",
    "bpf_xdp_adjust_tail": "grows or cuts packets",
    "bpf_xdp_adjust_meta": "prepends metadata",
    "bpf_redirect": "redirects packets to another device",
    "bpf_xdp_redirect": "redirects packets to another device",
    "bpf_xdp_redirect_map": "redirects packets through a map",
    "bpf_redirect_map": "redirects packets through a map",
    "dev_map_redirect": "redirects packets to another device",
    "dev_hash_map_redirect": "redirects packets to another device",
    "cpu_map_redirect": "redirects packets to another CPU",
    "xsk_map_redirect": "diverts packets to a user-space AF_XDP socket",
    "bpf_redirect_peer": "redirects packets into another network namespace",
    "bpf_redirect_neigh": "redirects packets to a neighbour",
    "bpf_clone_redirect": "copies packets to another device",
    "bpf_sk_redirect_map": "redirects socket data to another socket",
    "bpf_sk_redirect_hash": "redirects socket data to another socket",
    "bpf_msg_redirect_map": "redirects socket messages to another socket",
    "bpf_msg_redirect_hash": "redirects socket messages to another socket",
    "bpf_sk_assign": "steers packets to a chosen socket",
}


@dataclass
class _Findings:
    """Findings for one program, each with the same subject and evidence."""

    prog: BpfProgram
    found: list[Finding]

    def add(
        self, technique: str, severity: Severity, summary: str, attack: str = ROOTKIT, **more: str
    ) -> None:
        evidence: Evidence = {**_evidence(self.prog), **more}
        self.found.append(
            Finding(
                NAME,
                technique,
                severity,
                visible(_subject(self.prog)),
                visible(summary),
                Disposition.SUSPICIOUS,
                attack,
                evidence,
            )
        )


# C0 and C1 control characters, and DEL: a device, file, symbol or program name may carry
# them (a library's symbol table is anyone's text), and a terminal would obey them.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def visible(text: str) -> str:
    """`text` with control characters shown as \\xNN: summaries are read on terminals."""
    return text.translate(_CONTROL)


def _subject(prog: BpfProgram) -> str:
    return f"prog {prog.prog_id} ({prog.name or 'unnamed'}, {prog.prog_type})"


def _evidence(prog: BpfProgram) -> Evidence:
    return {
        "prog_id": prog.prog_id,
        "prog_type": prog.prog_type,
        "name": prog.name,
        "tag": prog.tag,
        "attach": [a.target or "?" for a in prog.attachments],
        "helpers": list(prog.helpers),
        "owners": [_owner_words(o.pid, o.exe or o.comm, o.fd_count) for o in prog.owners],
        "pins": list(prog.pins),
        "kept_by": list(prog.kept_by),
        "maps": list(prog.maps),
        "tail_calls": list(prog.tail_calls),
    }


def _owner_words(pid: int, exe: str, fds: int) -> str:
    return f"{pid} {exe}" + (f" ({fds} fds)" if fds > 1 else "")


def assess_program(prog: BpfProgram) -> list[Finding]:
    """Findings for one program, each with the program's identity as evidence."""
    if prog.patchguard_pid is not None:
        return [_patchguard_object(prog, prog.patchguard_pid)]
    out = _Findings(prog, [])
    _rootkit_helpers(out)
    _sensitive_hooks(out)
    _secret_probes(out)
    _packet_programs(out)
    _covert_triggers(out)
    _special_types(out)
    _orphan(out)
    _deleted_loaders(out)
    return out.found


def _patchguard_object(prog: BpfProgram, pid: int) -> Finding:
    return Finding(
        NAME,
        "patchguard-object",
        Severity.INFO,
        f"prog {prog.prog_id} ({prog.name}, {prog.prog_type})",
        f"patchguard's own program, loaded by another patchguard process (pid {pid}): its "
        "process runs patchguard and its tag is that of patchguard's bytecode",
        Disposition.EXPLAINED,
        evidence={"prog_id": prog.prog_id, "name": prog.name, "tag": prog.tag, "pid": pid},
    )


def _rootkit_helpers(out: _Findings) -> None:
    for helper in out.prog.helpers:
        if helper in ROOTKIT_HELPERS:
            severity, why = ROOTKIT_HELPERS[helper]
            out.add("rootkit-helper", severity, f"calls {helper}, which {why}")


def _sensitive_hooks(out: _Findings) -> None:
    prog = out.prog
    sensitive = [a.target for a in prog.attachments if a.target and _sensitive(a.target)]
    if prog.attach_btf and _sensitive(prog.attach_btf):
        sensitive.append(prog.attach_btf)
    if sensitive:
        out.add(
            "sensitive-hook",
            Severity.MEDIUM,
            f"runs on {', '.join(sorted(set(sensitive)))}: a path rootkits hook to hide or "
            "tamper (syscalls, exec, credentials, files)",
        )


def _secret_probes(out: _Findings) -> None:
    for a in out.prog.attachments:
        if a.secret is None or a.uprobe is None:
            continue
        hit, site = a.secret, a.uprobe
        out.add(
            hit.technique,
            hit.severity,
            hit.summary((a.target or "uprobe").split(":", 1)[0], site),
            hit.attack_id,
            probed_file=site.path,
            symbol=site.symbol or "unknown",
            build_id=site.build_id or "unknown",
            reads=hit.reads,
        )


def _packet_programs(out: _Findings) -> None:
    used = [h for h in out.prog.helpers if h in PACKET_HELPERS]
    if not used:
        return
    what = "; ".join(f"{h} ({PACKET_HELPERS[h]})" for h in used)
    where = ", ".join(a.target or "?" for a in out.prog.attachments) or "no attach point seen"
    out.add(
        "packet-tamper",
        Severity.MEDIUM,
        f"can rewrite or redirect packets ({where}): {what}",
        TRANSMITTED_DATA,
    )


def _covert_triggers(out: _Findings) -> None:
    prog = out.prog
    events = sorted({a.target for a in prog.attachments if a.target and _network_event(a.target)})
    if events:
        out.add(
            "covert-trigger",
            Severity.MEDIUM,
            f"runs on {', '.join(events)}: a network event a crafted packet from anywhere can "
            "fire, a possible remote trigger (a rootkit woken by a magic packet)",
            TRAFFIC_SIGNALING,
        )
    elif prog.prog_type in PACKET_PROGRAM_TYPES:
        where = ", ".join(a.target or "?" for a in prog.attachments) or "no attach point seen"
        out.add(
            "covert-trigger",
            Severity.MEDIUM,
            f"{PACKET_PROGRAM_TYPES[prog.prog_type]} ({where}): a possible remote trigger "
            "(a rootkit woken by a magic packet)",
            TRAFFIC_SIGNALING,
        )


def _special_types(out: _Findings) -> None:
    prog = out.prog
    if prog.prog_type == "sk_lookup":
        out.add(
            "socket-steering",
            Severity.MEDIUM,
            "an sk_lookup program picks which socket gets "
            "each new connection in its network namespace: a backdoor can sit behind any port",
            TRAFFIC_SIGNALING,
        )
    if prog.prog_type == "lsm":
        out.add(
            "lsm-hook",
            Severity.MEDIUM,
            f"an LSM program on {prog.attach_btf or '?'}: it can allow or deny security decisions",
        )


def kept_by_nothing(prog: BpfProgram) -> bool:
    """No process holds it, no pin, no link: what keeps it is inside the kernel."""
    return not (prog.owners or prog.pins or any(a.via == "link" for a in prog.attachments))


def _orphan(out: _Findings) -> None:
    prog = out.prog
    if not kept_by_nothing(prog):
        return
    lead = "no process holds it, no pin, no link" + (
        ", on a second look too" if prog.second_look else ""
    )
    if prog.kept_by:
        summary = f"{lead}: kept alive only by {'; '.join(prog.kept_by)}"
    elif prog.prog_type in SOCKET_HELD:
        summary = (
            f"{lead}: {SOCKET_HELD[prog.prog_type]}, which no interface names (a socket passed "
            "to or kept by another process, or a hidden owner)"
        )
    else:
        summary = (
            f"{lead}: something in the kernel keeps it alive (a cgroup or netlink attachment "
            "without a link, a tail-call map, or a hidden owner)"
        )
    out.add("orphan-program", Severity.MEDIUM, summary)


def _deleted_loaders(out: _Findings) -> None:
    for o in out.prog.owners:
        if o.exe_deleted or o.exe_missing:
            state = "deleted" if o.exe_deleted else "not on disk"
            out.add(
                "loader-deleted",
                Severity.HIGH,
                f"its loader pid {o.pid} runs {o.exe}, which is {state}: a loader that "
                "removes itself hides where the program came from",
                "T1070.004",
            )


def spellings(target: str) -> list[str]:
    """Every way a target may be written: `tracepoint:sched:sched_process_exec` is also
    `sched:sched_process_exec` and `sched_process_exec`."""
    parts = target.split(":")
    return [":".join(parts[i:]) for i in range(len(parts))]


def _sensitive(target: str) -> bool:
    return any(s.startswith(SENSITIVE_PREFIXES) for s in spellings(target))


def _network_event(target: str) -> bool:
    kind, _, rest = target.partition(":")
    if kind in TRACEPOINT_KINDS:
        return any(s.startswith(NETWORK_TRACEPOINTS) for s in spellings(rest))
    if kind in ("kprobe", "kretprobe", "fentry", "fexit"):
        return rest.split("+", 1)[0] in NETWORK_FUNCTIONS
    # a bare BTF function (fentry links) or a category:event from tracefs
    return target in NETWORK_FUNCTIONS or target.startswith(NETWORK_TRACEPOINTS[:7])


__all__ = [
    "NAME",
    "ROOTKIT_HELPERS",
    "SENSITIVE_PREFIXES",
    "Attachment",
    "assess_program",
    "visible",
]
