"""Baseline-free inline-hook check: every ftrace site must hold what ftrace writes there.

ftrace keeps a record of each function's call site (kernel/ftrace_records.py); ftrace only
ever writes a NOP5 there, or a CALL to its own dispatch (ftrace_caller, ftrace_regs_caller), to
an ops trampoline ([__builtin__ftrace]) or to a BPF trampoline ([bpf]). A JMP, a CALL anywhere
else, or any other bytes at a function's entry is an inline hook (the khook method), found
without a baseline; the target is named by bounds (kernel/attribution.py), so a stub in memory
no module owns is said as such, never as the nearest innocent module's symbol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import add, sub

from patchguard.findings import Disposition, Finding
from patchguard.kernel import Kernel
from patchguard.kernel.child_read import ChildRead
from patchguard.kernel.ftrace_records import (
    ITER_CODE,
    Records,
    layout,
    sites_of,
    variable_address,
)
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.memory import KernelMemory
from patchguard.surfaces.base import finding
from patchguard.x86 import insn as x86

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    # imported where a site calls code no view names: `check`, which imports this module
    # for the surface alone, never pays for the BPF object and trampoline readers
    from patchguard.surfaces import bpf_trampolines

TRAMPOLINE_MODULES = frozenset({"__builtin__ftrace", "bpf"})
DISPATCH = ("ftrace_caller", "ftrace_regs_caller")
PAGE = 4096
SETTLE = 0.01  # seconds before an INT3 is read again: text_poke_bp() holds one for a moment


@dataclass(frozen=True)
class SiteHook:
    """An ftrace site holding what ftrace never writes."""

    site: int
    function: str  # the site's function, named by bounds
    code: str  # hex
    disasm: str
    target: int | None  # where its JMP/CALL goes
    target_name: str | None  # named by bounds: a symbol, or memory of no listed module
    target_module: str | None  # the module that owns the target (or the hidden one found)
    # the target is a BPF trampoline no view names: its programs, as memory has them
    trampoline: bpf_trampolines.HiddenTrampoline | None = None


@dataclass(frozen=True)
class FtraceSites:
    """The ftrace sites read and what they hold."""

    sites: int
    calls: int  # sites calling a trampoline: functions ftrace or BPF attach to now
    source: str  # how the record list was found
    hooks: tuple[SiteHook, ...] = ()
    # ftrace sites whose function /proc/kallsyms, as this process read it, does not list:
    # named by the kernel's own %pS where it can (the view lies), else the bare address
    # (code of no listed module: a hidden module's functions keep their ftrace records)
    unlisted: int = 0
    unlisted_named: tuple[str, ...] = ()  # the kernel names them: kallsyms hid them from us
    unlisted_unnamed: tuple[str, ...] = ()  # nobody names them: memory of no listed module


def trampolines(symbols: SymbolTable) -> frozenset[int]:
    """What an ftrace site may call: ftrace's dispatch and every ops or BPF trampoline."""
    found = {s.address for s in symbols.in_modules(set(TRAMPOLINE_MODULES))}
    found |= {a for name in DISPATCH if (a := symbols.address_of(name)) is not None}
    return frozenset(found)


def judge(code: bytes, site: int, allowed: frozenset[int]) -> tuple[bool, int | None]:
    """(legitimate, branch target) of the 5 bytes at an ftrace site."""
    if code == x86.NOP5:
        return True, None
    hop = x86.branch(code, site)
    if hop is not None and hop.kind == "call" and hop.dest in allowed:
        return True, hop.dest
    return False, hop.dest if hop is not None else None


def record_list(kernel: Kernel, memory: KernelMemory) -> tuple[int, str]:
    """(address of ftrace_pages_start, how it was found)."""
    names = ("ftrace_pages_start", "ftrace_rec_iter_start")
    return variable_address(kernel, memory, *names, ITER_CODE, "ftrace records")


Read = Callable[[int, int], bytes]


def site_code(
    sites: Sequence[int], text: bytes, text_start: int, read: Read, skip: bytes | None = None
) -> dict[int, bytes]:
    """The 5 bytes at each site (but those that hold `skip`), in the sites' order: from the
    core text already read, else one read per page."""
    lo, hi = text_start, text_start + len(text) - 5
    # one comprehension over 48k sites, no call per site
    found = {s: c for s in sites if lo <= s <= hi and (c := text[s - lo : s - lo + 5]) != skip}
    if not sites or (lo <= min(sites) and max(sites) <= hi):  # all in the core text
        return found
    outside = [s for s in sites if not lo <= s <= hi]
    found |= _read_sites(outside, read, skip)
    return {s: found[s] for s in sites if s in found}


def _read_sites(sites: Iterable[int], read: Read, skip: bytes | None) -> dict[int, bytes]:
    """The 5 bytes at each site (but `skip`), one read per page."""
    pages: dict[int, bytes] = {}
    found = {}
    for site in sites:
        page = site & ~(PAGE - 1)
        with_next = site + 5 > page + PAGE
        key = page if not with_next else site
        if key not in pages:
            pages[key] = read(key, 5 if with_next else PAGE)
        code = pages[key][site - key : site - key + 5]
        if code != skip:
            found[site] = code
    return found


def _hook(
    kernel: Kernel,
    site: int,
    code: bytes,
    target: int | None,
    tramp: bpf_trampolines.HiddenTrampoline | None = None,
) -> SiteHook:
    names = kernel.attributor()
    who = names.attribute(target) if target is not None else None
    loc = names.lookup(site)
    return SiteHook(
        site,
        loc.symbol.name if loc is not None and loc.offset <= 4 else names.name(site),
        code.hex(" "),
        x86.disasm(code, site),
        target,
        str(who) if who is not None else None,
        who.module if who is not None else None,
        tramp,
    )


def check_sites(kernel: Kernel, memory: KernelMemory, text: bytes, start: int) -> FtraceSites:
    """Read ftrace's records and judge every site (`text`: core text read from `start`)."""
    records, source = read_records(kernel, memory)
    codes = site_code(records.sites, text, start, memory.read, skip=x86.NOP5)  # NOP5: most
    return judge_sites(kernel, memory, records, source, codes)


def read_records(kernel: Kernel, memory: KernelMemory) -> tuple[Records, str]:
    """ftrace's records, and how their list was found."""
    head, source = record_list(kernel, memory)
    return sites_of(memory, head, layout(kernel.vmlinux_btf)), source


def judge_sites(
    kernel: Kernel, memory: KernelMemory, records: Records, source: str, codes: dict[int, bytes]
) -> FtraceSites:
    """Judge the sites whose bytes are not a NOP5 (`codes`, in the records' order)."""
    sites = records.sites
    allowed = trampolines(kernel.kallsyms) if codes else frozenset()
    calls, bad = 0, []
    for site, code in codes.items():
        ok, target = judge(code, site, allowed)
        if ok:
            calls += target is not None
        elif code[:1] == bytes([x86.INT3]) and _settled(memory, site, code):
            continue  # the kernel was patching this site: it holds NOP5 or CALL again
        else:
            bad.append((site, code, target))
    called = {t for _, c, t in bad if t is not None and c[0] == x86.CALL}
    tramps = _trampolines(kernel, memory, called) if called else {}
    hooks = tuple(_hook(kernel, s, c, t, tramps.get(t) if t else None) for s, c, t in bad)
    named, unnamed, count = _unlisted(kernel, sites, records.disabled)
    return FtraceSites(len(sites), calls, source, hooks, count, named, unnamed)


def _trampolines(
    kernel: Kernel, memory: KernelMemory, called: set[int]
) -> dict[int, bpf_trampolines.HiddenTrampoline]:
    """The called targets that are BPF trampolines no view names (imported only for such
    calls: a clean kernel has none)."""
    from patchguard.surfaces import bpf_trampolines

    return bpf_trampolines.identify(kernel, memory, called)


SHOWN = 12  # unlisted functions named in a finding


def _unlisted(
    kernel: Kernel, sites: Sequence[int], disabled: frozenset[int]
) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """The ftrace sites (of records ftrace may enable: not `disabled`) whose function
    kallsyms, as read here, does not list: those the kernel's own %pS names as a function's
    start (the view hid them), and those nobody names (code of no listed module). A site the
    kernel names deep inside another function is no function's: it is not counted."""
    missing = [s for s in _not_started(kernel.kallsyms, sites) if s not in disabled]
    if missing and kernel.live:
        # A module loaded since kallsyms was read has records the earlier read lacks: only
        # what a second read, after the records, still lacks counts.
        missing = _not_started(_fresh_symbols(kernel), missing)
    if not missing:
        return (), (), 0
    said = kernel.names(missing)
    hidden = [a for a in missing if a in said and said[a].offset in (0, 4)]
    nobody = [a for a in missing if a not in said]
    named = tuple(str(said[a]) for a in hidden[:SHOWN])
    unnamed = tuple(kernel.attributor().name(a) for a in nobody[:SHOWN])
    return named, unnamed, len(hidden) + len(nobody)


def _settled(memory: KernelMemory, site: int, code: bytes) -> bool:
    time.sleep(SETTLE)
    again = memory.read(site, 5)
    return again != code and (again == x86.NOP5 or again[0] == x86.CALL)


def _not_started(symbols: SymbolTable, sites: Sequence[int]) -> list[int]:
    """The sites no symbol starts at (or 4 bytes before: the ENDBR64 under IBT), in their
    order; by set operations at C speed (48k sites, 122k starts)."""
    left = symbols.not_starting(sites)
    if not left:
        return []
    endbr = symbols.not_starting(map(sub, left, repeat(4)))  # where the ENDBR64 would start
    left = set(map(add, endbr, repeat(4)))
    return [s for s in sites if s in left] if left else []


def _fresh_symbols(kernel: Kernel) -> SymbolTable:
    try:
        raw = ChildRead(kernel.path("/proc/kallsyms")).result()
    except OSError:
        return SymbolTable("")
    return SymbolTable(raw.decode(errors="replace"))


def findings(surface: str, sites: FtraceSites) -> list[Finding]:
    return [_finding(surface, hook) for hook in sites.hooks] + _unlisted_findings(surface, sites)


def _unlisted_findings(surface: str, state: FtraceSites) -> list[Finding]:
    out = []
    if state.unlisted_named:
        out.append(
            finding(
                surface,
                "filtered-view",
                "/proc/kallsyms",
                f"/proc/kallsyms as read by this process lists no function at {state.unlisted} "
                f"of the {state.sites} ftrace sites the kernel's own records hold, functions "
                f"the kernel itself still names ({', '.join(state.unlisted_named)}): "
                "something filters what this process reads.",
                {
                    "ftrace_sites": state.sites,
                    "unlisted": state.unlisted,
                    "kernel_names": list(state.unlisted_named),
                },
                disposition=Disposition.TAMPERING,
            )
        )
    if state.unlisted_unnamed:
        out.append(
            finding(
                surface,
                "hidden-module",
                "ftrace records",
                f"ftrace's records hold functions in code neither kallsyms nor the kernel's "
                f"own naming lists ({', '.join(state.unlisted_unnamed)}): the functions of a "
                "module that took itself off the module list keep their ftrace records.",
                {"unlisted": state.unlisted, "addresses": list(state.unlisted_unnamed)},
                disposition=Disposition.TAMPERING,
            )
        )
    return out


def _finding(surface: str, hook: SiteHook) -> Finding:
    if hook.trampoline is not None:
        from patchguard.surfaces import bpf_trampolines

        return bpf_trampolines.site_finding(surface, hook.function, hook.site, hook.trampoline)
    goes = f": it goes to {hook.target_name}" if hook.target_name else ""
    return finding(
        surface,
        "inline-hook",
        hook.function,
        f"the ftrace site of {hook.function} holds {hook.disasm}, not a NOP or a call to an "
        f"ftrace or BPF trampoline{goes}",
        {
            "address": f"{hook.site:#x}",
            "code": hook.code,
            "target": f"{hook.target:#x}" if hook.target is not None else None,
            "target_name": hook.target_name,
            "target_module": hook.target_module,
        },
        disposition=Disposition.TAMPERING,
    )
