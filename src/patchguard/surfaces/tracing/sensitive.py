"""What a hooked function or probed binary is: the kernel functions rootkits hook (by category)
and the programs and libraries that handle secrets."""

from __future__ import annotations

import re

# --- what a hooked function is ------------------------------------------------------------------

# Functions rootkits hook, by what hooking them gives: exact names first, then name prefixes.
SENSITIVE_NAMES: dict[str, str] = {
    "commit_creds": "credentials",
    "prepare_creds": "credentials",
    "prepare_kernel_cred": "credentials",
    "override_creds": "credentials",
    "revert_creds": "credentials",
    "__sys_setuid": "credentials",
    "__sys_setreuid": "credentials",
    "__sys_setresuid": "credentials",
    "filldir": "directory-listing",
    "filldir64": "directory-listing",
    "compat_filldir": "directory-listing",
    "iterate_dir": "directory-listing",
    "proc_pid_readdir": "directory-listing",
    "proc_root_readdir": "directory-listing",
    "__x64_sys_getdents": "directory-listing",
    "__x64_sys_getdents64": "directory-listing",
    "tcp4_seq_show": "network-listing",
    "tcp6_seq_show": "network-listing",
    "udp4_seq_show": "network-listing",
    "udp6_seq_show": "network-listing",
    "inet_sk_diag_fill": "network-listing",
    "packet_rcv": "network-listing",
    "tpacket_rcv": "network-listing",
    "m_show": "module-list",
    "load_module": "module-list",
    "do_init_module": "module-list",
    "free_module": "module-list",
    "__x64_sys_init_module": "module-list",
    "__x64_sys_finit_module": "module-list",
    "__x64_sys_delete_module": "module-list",
    "kallsyms_lookup_name": "kallsyms",
    "kallsyms_on_each_symbol": "kallsyms",
    "do_filp_open": "file",
    "filp_open": "file",
    "kernel_read": "file",
    "kernel_write": "file",
}
SENSITIVE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("__x64_sys_", "syscall"),
    ("__ia32_sys_", "syscall"),
    ("__ia32_compat_sys_", "syscall"),
    ("__x32_compat_sys_", "syscall"),
    ("__arm64_sys_", "syscall"),
    ("__se_sys_", "syscall"),
    ("__do_sys_", "syscall"),
    ("do_sys_", "syscall"),
    ("ksys_", "syscall"),
    ("x64_sys_call", "syscall"),
    ("vfs_", "file"),
    ("security_", "security"),
    ("selinux_", "security"),
    ("apparmor_", "security"),
    ("bpf_lsm_", "security"),
    ("cap_", "security"),
)
# The ftrace handler of kprobes placed on a function's ftrace site ([FTRACE] in kprobes/list).
KPROBE_HANDLER = "kprobe_ftrace_handler"
KLP_HANDLER = "klp_ftrace_handler"
# Hooks there serve hiding or finding hidden kernel symbols, which tools rarely need.
ROOTKIT_ONLY = frozenset({"module-list", "kallsyms"})


def sensitive_category(function: str) -> str | None:
    """What hooking `function` gives an attacker ("credentials", "syscall", ...), or None."""
    name = function.split(".", 1)[0]  # compiler clones: filldir64.cold, vfs_read.isra.0
    if name in SENSITIVE_NAMES:
        return SENSITIVE_NAMES[name]
    return next((cat for prefix, cat in SENSITIVE_PREFIXES if name.startswith(prefix)), None)


def symbol_name(pS: str) -> str:
    """The bare symbol of a %pS rendering: "fprobe_handler+0x0/0x30 [mod]" -> "fprobe_handler"."""
    return pS.split(" ", 1)[0].split("+", 1)[0]


def symbol_module(pS: str) -> str | None:
    found = re.search(r"\[([^\]\s]+)\]\s*$", pS)
    return found.group(1) if found else None
