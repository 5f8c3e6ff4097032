"""Pure functions over the text of the posture files, so they can be tested on captures."""

from __future__ import annotations

from collections.abc import Iterable

from patchguard.surfaces.posture.records import BootParam, Cmdline, TaintFlag


def parse_lockdown(text: str) -> str:
    """The selected mode of `none [integrity] confidentiality`."""
    selected = [w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")]
    if len(selected) != 1 or not selected[0]:
        raise ValueError(f"no single [selected] mode in {text.strip()!r}")
    return selected[0]


def lockdown_modes(text: str) -> tuple[str, ...]:
    return tuple(w.strip("[]") for w in text.split())


def parse_lsm(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.strip().split(",") if name)


# Documentation/admin-guide/tainted-kernels.rst, bit -> (letter, meaning).
TAINT_BITS: dict[int, tuple[str, str]] = {
    0: ("P", "proprietary module was loaded"),
    1: ("F", "module was force loaded"),
    2: ("S", "kernel running on an out of specification system"),
    3: ("R", "module was force unloaded"),
    4: ("M", "processor reported a Machine Check Exception (MCE)"),
    5: ("B", "bad page referenced or some unexpected page flags"),
    6: ("U", "taint requested by userspace application"),
    7: ("D", "kernel died recently, i.e. there was an OOPS or BUG"),
    8: ("A", "an ACPI table was overridden by user"),
    9: ("W", "kernel issued warning"),
    10: ("C", "staging driver was loaded"),
    11: ("I", "workaround for bug in platform firmware applied"),
    12: ("O", "externally-built (out-of-tree) module was loaded"),
    13: ("E", "unsigned module was loaded"),
    14: ("L", "soft lockup occurred"),
    15: ("K", "kernel has been live patched"),
    16: ("X", "auxiliary taint, defined for and used by distros"),
    17: ("T", "kernel was built with the struct randomization plugin"),
    18: ("N", "an in-kernel test has been run"),
    19: ("J", "userspace used a mutating debug operation in fwctl"),
}


def parse_taint(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"negative taint {value}")
    return value


def decode_taint(value: int) -> list[TaintFlag]:
    flags = []
    for bit in range(value.bit_length()):
        if value >> bit & 1:
            letter, meaning = TAINT_BITS.get(bit, ("?", "unknown taint bit (newer kernel?)"))
            flags.append(TaintFlag(bit, letter, meaning))
    return flags


def _next_arg(args: str) -> tuple[str, str | None, str]:
    """One parameter off the front of `args`, as lib/cmdline.c next_arg() takes it.

    Double quotes may wrap the whole parameter (`"a=b c"`) or its value (`a="b c"`); they
    group spaces and are removed. Returns (param, value, rest).
    """
    quoted = args.startswith('"')
    if quoted:
        args = args[1:]
    in_quote = quoted
    equals = -1
    i = 0
    while i < len(args):
        ch = args[i]
        if ch.isspace() and not in_quote:
            break
        if equals < 0 and ch == "=":
            equals = i
        if ch == '"':
            in_quote = not in_quote
        i += 1
    token, rest = args[:i], args[i:].lstrip()
    closing = token.endswith('"')
    if equals < 0:
        return (token[:-1] if quoted and closing else token), None, rest
    param, value = token[:equals], token[equals + 1 :]
    value_quoted = value.startswith('"')
    if value_quoted:
        value = value[1:]
    if (quoted or value_quoted) and closing and value.endswith('"'):
        value = value[:-1]
    return param, value, rest


def parse_cmdline(text: str) -> Cmdline:
    """Kernel parameters of /proc/cmdline; `--` ends them and the rest goes to init."""
    params: list[BootParam] = []
    rest = text.strip()
    while rest:
        param, value, rest = _next_arg(rest)
        if param == "--" and value is None:
            return Cmdline(tuple(params), tuple(rest.split()))
        params.append(BootParam(param.replace("-", "_"), value))
    return Cmdline(tuple(params))


def parse_cpu_flags(text: str) -> frozenset[str]:
    """The flags every CPU has: a protection missing on one CPU is missing."""
    common: frozenset[str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags = frozenset(value.split())
            common = flags if common is None else common & flags
    if common is None:
        raise ValueError("no 'flags' line (not an x86 /proc/cpuinfo?)")
    return common


def parse_secure_boot(data: bytes) -> bool:
    """An efivarfs file is 4 bytes of attributes, then the variable: here one byte, 1 = on."""
    if len(data) < 5:
        raise ValueError(f"{len(data)} bytes, expected 4 bytes of attributes and 1 of value")
    return data[4] == 1


def find_stext(lines: Iterable[str]) -> int | None:
    """The address of `_stext` from kallsyms lines ("ffffffff81000000 T _stext")."""
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "_stext":
            return int(fields[0], 16)
    return None


def parse_setting(text: str) -> str:
    """A one-value sysctl or parameter file; several words or none is not what we expect."""
    words = text.split()
    if len(words) != 1:
        raise ValueError(f"expected one value, read {text.strip()!r}")
    return words[0]
