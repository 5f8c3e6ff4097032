"""Explain changed kernel text: which byte runs Linux patched itself (jump labels, static calls,
ftrace sites, kprobes) and which are tampering (x86-64; shared/DESIGN.md, "Dynamic patching is
legitimate").

Pure code: the patch-site tables, the symbols and (optionally) a reader of live memory come in as
arguments. The table layouts and instruction forms are in x86/insn.py.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from patchguard.x86 import insn as x86
from patchguard.x86.inputs import KernelRead, Symbols
from patchguard.x86.insn import JumpEntry, StaticCallSite

CONTEXT = 16  # unchanged bytes kept either side of a run: enough to see a whole site


@dataclass(frozen=True)
class ChangedRun:
    """Bytes at `address` that changed from `old` to `new`, with unchanged bytes around them
    (`before`, `after`: the same in old and new) so that a site the run starts inside is seen
    whole."""

    address: int
    old: bytes
    new: bytes
    before: bytes = b""
    after: bytes = b""

    @property
    def end(self) -> int:
        return self.address + len(self.old)

    def window(self, new: bool) -> tuple[int, bytes]:
        body = self.new if new else self.old
        return self.address - len(self.before), self.before + body + self.after


def _run(old: bytes, new: bytes, first: int, s: int, e: int) -> ChangedRun:
    """old[s:e] -> new[s:e] with up to CONTEXT equal bytes either side; old[0] is at `first`."""
    a, b = s, e
    while a > 0 and s - a < CONTEXT and old[a - 1] == new[a - 1]:
        a -= 1
    while b < len(old) and b - e < CONTEXT and old[b] == new[b]:
        b += 1
    return ChangedRun(first + s, old[s:e], new[s:e], old[a:s], old[e:b])


def _differing(old: bytes, new: bytes, lo: int, hi: int, step: int) -> Iterator[int]:
    """Indexes where old and new differ; equal blocks (4096, then 64 bytes) compare at C speed."""
    for at in range(lo, hi, step):
        end = min(at + step, hi)
        if step == 1:
            if old[at] != new[at]:
                yield at
        elif old[at:end] != new[at:end]:
            yield from _differing(old, new, at, end, step // 64 or 1)


def diff_runs(old: bytes, new: bytes, base: int, merge_gap: int = 4) -> list[ChangedRun]:
    """The runs of differing bytes of two copies of text at `base`; runs at most merge_gap equal
    bytes apart are one (a changed rel32 can keep equal bytes in its middle)."""
    if len(old) != len(new):
        raise ValueError(f"cannot diff {len(old)} bytes against {len(new)}")
    spans: list[list[int]] = []
    for i in _differing(old, new, 0, len(old), 4096):
        if spans and i - spans[-1][1] <= merge_gap:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [_run(old, new, base, s, e) for s, e in spans]


@dataclass(frozen=True)
class Site:
    address: int
    kind: str  # "jump-label", "static-call-site", "static-call-trampoline", "kprobe"
    span: int  # the most bytes it can cover
    entry: JumpEntry | StaticCallSite | None = None
    name: str = ""  # the trampoline's symbol, or the kprobe's owner


MAX_SPAN = 6  # a tail-call static call site holding a Jcc rel32


@dataclass(frozen=True)
class KeyName:
    """What a jump label's static key or a static call belongs to, said as a phrase ("the key
    of tracepoint sys_enter", "static key 0xffff..."), and who turned it on (None: unknown)."""

    name: str
    owner: str | None = None


class KeyNamer(Protocol):
    def jump_key(self, key: int) -> KeyName: ...
    def call_key(self, key: int) -> KeyName | None: ...
    def trampoline(self, name: str) -> KeyName | None: ...


class PlainKeys:
    """Names a static key only by a symbol that starts exactly at it, else by its address: the
    nearest symbol below (`__start_once+0x6300` on a kernel without data symbols) would name
    something else."""

    def __init__(self, symbols: Symbols) -> None:
        self.symbols = symbols

    def jump_key(self, key: int) -> KeyName:
        loc = self.symbols.lookup(key)
        exact = loc is not None and loc.offset == 0
        return KeyName(f"static key {loc.symbol.name if loc and exact else hex(key)}")

    def call_key(self, key: int) -> KeyName | None:
        return None

    def trampoline(self, name: str) -> KeyName | None:
        return None


class SiteIndex:
    """Every known patch site sorted by address, and who may own an ftrace site."""

    def __init__(
        self,
        jump_entries: Iterable[JumpEntry] = (),
        static_call_sites: Iterable[StaticCallSite] = (),
        trampolines: Iterable[tuple[str, int]] = (),  # (name, address) of the __SCT__* symbols
        ftrace_owners: Mapping[int, str] | None = None,  # function address -> owner
        ftrace_trampolines: Iterable[int] = (),  # ftrace_caller, bpf_trampoline_*, ...
        kprobes: Mapping[int, str] | None = None,  # probed address -> owner
        # the call inside ftrace_caller/ftrace_regs_caller (labels ftrace_call,
        # ftrace_regs_call) -> what it may call: ftrace_stub with one ftrace user, the ops list
        # function with several, or a registered ops' own function
        ftrace_callers: Mapping[int, Mapping[int, str]] | None = None,
        keys: KeyNamer | None = None,  # what the keys belong to; default PlainKeys
        # function address -> the BPF trampoline its direct call reaches (owners.py): the one
        # thing its ftrace site may call
        ftrace_direct: Mapping[int, int] | None = None,
    ) -> None:
        self.keys = keys
        # Init sites are never patched after boot (jump_label_can_update(), static_call's
        # "if (!init && static_call_is_init(site))"): their memory may hold other code by now.
        sites = [Site(e.code, "jump-label", 5, e) for e in jump_entries if not e.init]
        calls = [s for s in static_call_sites if not s.init]
        sites += [Site(s.addr, "static-call-site", 6 if s.tail else 5, s) for s in calls]
        sites += [Site(a, "static-call-trampoline", 5, name=n) for n, a in trampolines]
        sites += [Site(a, "kprobe", 5, name=owner) for a, owner in (kprobes or {}).items()]
        self._sites = sorted(sites, key=lambda s: s.address)
        self._starts = [s.address for s in self._sites]
        self.ftrace_owners = dict(ftrace_owners or {})
        self.ftrace_trampolines = frozenset(ftrace_trampolines)
        self.ftrace_callers = {a: dict(t) for a, t in (ftrace_callers or {}).items()}
        self.ftrace_direct = dict(ftrace_direct or {})

    def jump_keys(self) -> list[int]:
        """The distinct static keys of the jump labels, in table order."""
        entries = (s.entry for s in self._sites if s.kind == "jump-label")
        return list(dict.fromkeys(e.key for e in entries if isinstance(e, JumpEntry)))

    def overlapping(self, start: int, end: int) -> list[Site]:
        """The sites whose widest form overlaps [start, end), found in O(log n)."""
        lo = bisect.bisect_left(self._starts, start - MAX_SPAN + 1)
        hi = bisect.bisect_left(self._starts, end)
        return [s for s in self._sites[lo:hi] if s.address + s.span > start]


@dataclass(frozen=True)
class Verdict:
    address: int  # of old[0] and new[0]
    location: str  # "symbol+0xoff [mod]"
    old: bytes  # the whole site when the run is in one, else the run and a little context
    new: bytes
    explained: bool
    technique: str
    explanation: str
    disasm_old: str
    disasm_new: str
    owner: str | None = None


class _View:
    """Old or new bytes near a run: from its window, else from live memory (equal to old and new
    outside the run) with the run laid over it."""

    def __init__(self, run: ChangedRun, read: KernelRead | None) -> None:
        self.run, self.read = run, read

    def clip(self, start: int, end: int, new: bool) -> bytes:
        first, whole = self.run.window(new)
        return whole[max(start - first, 0) : max(end - first, 0)]

    def get(self, address: int, size: int, new: bool) -> bytes | None:
        first, whole = self.run.window(new)
        if first <= address and address + size <= first + len(whole):
            return whole[address - first : address - first + size]
        live = self.read(address, size) if self.read else None
        if live is None or len(live) < size:
            return None
        out = bytearray(live[:size])
        for i in range(size):
            if self.run.address <= address + i < self.run.end:
                out[i] = whole[address + i - first]
        return bytes(out)


def _name(symbols: Symbols, address: int) -> str:
    return symbols.name(address)


def _function_start(symbols: Symbols, address: int) -> str | None:
    """The function's name if `address` is the start of one in core or module text."""
    loc = symbols.lookup(address)
    if loc is None or loc.offset or not loc.symbol.is_text:
        return None
    if not (symbols.in_core_text(address) or loc.symbol.module):
        return None
    return loc.symbol.name + (f" [{loc.symbol.module}]" if loc.symbol.module else "")


Judged = tuple[bool, str, "str | None"]  # explained, explanation, owner


def _no(why: str) -> Judged:
    return False, why, None


def _form(code: bytes) -> str:
    names = {x86.NOP2: "NOP2", x86.NOP5: "NOP5"}
    return names.get(code) or {x86.JMP8: "JMP8", x86.JMP32: "JMP32"}.get(code[0], code.hex(" "))


def _jump_label(
    site: Site, old: bytes, new: bytes, sym: Symbols, read: KernelRead | None, keys: KeyNamer
) -> Judged:
    entry = site.entry
    assert isinstance(entry, JumpEntry)
    target, hop = _name(sym, entry.target), x86.branch(new, site.address)
    if new == (x86.NOP2 if len(new) == 2 else x86.NOP5):
        jmp, why = False, f"jump_label site: {_form(old)} -> {_form(new)}"
    elif hop and hop.kind == "jmp" and hop.length == len(new):
        if hop.dest != entry.target:
            return _no(f"jump label site retargeted to {_name(sym, hop.dest)} (not {target})")
        jmp, why = True, f"jump_label site: {_form(old)} -> JMP to its own target {target}"
    else:
        return _no(f"jump label site holds {x86.disasm(new, site.address)}, not NOP or JMP")
    key = keys.jump_key(entry.key)
    raw = read(entry.key, 4) if read else None
    likely = "likely" if entry.branch else "unlikely"
    if raw is not None and len(raw) >= 4 and (enabled := x86.s32(raw)) >= 0:  # < 0: updating
        wants_jmp = (enabled > 0) != entry.branch
        state = f"{key.name} ({likely}, enabled={enabled})"
        if wants_jmp != jmp:
            return _no(f"{why}, but {state} calls for {'JMP' if wants_jmp else 'NOP'}")
        return True, f"{why}, as {state} calls for", key.owner
    return True, f"{why}, for {key.name} ({likely})", key.owner


def _call_key(site: Site, keys: KeyNamer) -> KeyName | None:
    if site.kind == "static-call-trampoline":
        return keys.trampoline(site.name)
    return keys.call_key(site.entry.key) if isinstance(site.entry, StaticCallSite) else None


def _static_call(
    site: Site, old: bytes, new: bytes, sym: Symbols, _: KernelRead | None, keys: KeyNamer
) -> Judged:
    tramp = site.kind == "static-call-trampoline"
    tail = tramp or (isinstance(site.entry, StaticCallSite) and site.entry.tail)
    key = _call_key(site, keys)
    what = f"static call trampoline {site.name}" if tramp else "static call site"
    what += f" of {key.name}" if key else ""
    owner = key.owner if key else None
    if tail and new[0] == x86.RET and new[1:] in (b"\xcc" * (len(new) - 1), old[1:]):
        return True, f"{what} now returns at once (no function set)", owner
    if not tail and new == x86.NOP5:
        return True, f"{what} is a NOP (no function set)", owner
    if not tail and new in x86.XOR5RAX:
        return True, f"{what} inlines __static_call_return0 as xor eax,eax", owner
    hop = x86.branch(new, site.address)
    if hop and hop.length == len(new) and (hop.kind == "call") != tail:
        verb = "calls" if hop.kind == "call" else "jumps to"
        func = _function_start(sym, hop.dest)
        if func:
            return True, f"{what} now {verb} the start of {func}", owner
        return _no(f"{what} {verb} {_name(sym, hop.dest)}, not the start of a function")
    allowed = "JMP or RET" if tail else "CALL or NOP"
    return _no(f"{what} holds {x86.disasm(new, site.address)}, not a {allowed}")


def _kprobe(
    site: Site, old: bytes, new: bytes, sym: Symbols, _: KernelRead | None, __: KeyNamer
) -> Judged:
    """site.name is the kprobe said whole ("kprobe on X registered by Y")."""
    if new == bytes([x86.INT3]):
        return True, f"INT3 of the {site.name}", site.name
    hop = x86.branch(new, site.address)
    loc = sym.lookup(hop.dest) if hop and hop.kind == "jmp" and len(new) == 5 else None
    if loc and loc.symbol.module == "__builtin__kprobes":  # an optimized kprobe's detour buffer
        return True, f"JMP to {loc}, the detour of the optimized {site.name}", site.name
    return _no(f"the site of the {site.name} holds {x86.disasm(new, site.address)}")


_TABLE_KINDS = ("jump-label", "static-call-site", "static-call-trampoline")
_JUDGES = {
    "jump-label": _jump_label,
    "static-call-site": _static_call,
    "static-call-trampoline": _static_call,
    "kprobe": _kprobe,
}


def _span(site: Site, view: _View) -> int:
    """How many bytes the site really covers, from the instruction it holds."""
    if site.kind == "jump-label":
        for new in (False, True):
            code = view.get(site.address, 5, new) or view.get(site.address, 2, new)
            if code and (length := x86.jump_site_length(code)):
                return length
        return 5
    codes = [view.get(site.address, site.span, new) for new in (False, True)]
    if site.kind == "kprobe":
        return 5 if codes[1] and codes[1][0] == x86.JMP32 else 1
    if site.span == 6 and not any(c and c[0] == 0x0F for c in codes):
        return 5  # a tail-call site without a Jcc
    return site.span


def _technique(old: bytes, new: bytes, address: int, symbols: Symbols) -> str:
    loc = symbols.lookup(address)
    if loc and loc.symbol.is_text and loc.offset <= 16 and new.startswith(x86.HOOK_PREFIXES):
        return "inline-hook"
    if any((a == x86.RET) != (b == x86.RET) for a, b in zip(old, new, strict=False)):
        return "patched-return"
    return "patched-code"


def _verdict(
    address: int, old: bytes, new: bytes, judged: Judged, technique: str, symbols: Symbols
) -> Verdict:
    """A table site keeps its technique when tampered with; anything else is named by what the
    new bytes do."""
    explained, why, owner = judged
    if not explained and technique not in _TABLE_KINDS:
        technique = _technique(old, new, address, symbols)
    dis_old, dis_new = x86.disasm(old, address), x86.disasm(new, address)
    where = _name(symbols, address)
    return Verdict(address, where, old, new, explained, technique, why, dis_old, dis_new, owner)


def _ftrace(run: ChangedRun, view: _View, index: SiteIndex, symbols: Symbols) -> Verdict | None:
    """The 5-byte site at a function's entry (after ENDBR64 under IBT), if the run lies in it
    and it holds what ftrace writes there (NOP5 or a CALL) before and after."""
    loc = symbols.lookup(run.address)
    if loc is None or not loc.symbol.is_text or loc.offset >= 9:
        return None
    func = site = loc.symbol.address
    if func in index.ftrace_callers:
        return _ftrace_caller(run, view, index.ftrace_callers[func], loc.symbol.name, symbols)
    if view.get(func, 4, False) in x86.ENDBRS and view.get(func, 4, True) in x86.ENDBRS:
        site = func + 4
    old, new = view.get(site, 5, False), view.get(site, 5, True)
    if old is None or new is None or not site <= run.address < run.end <= site + 5:
        return None
    if not all(code == x86.NOP5 or code[0] == x86.CALL for code in (old, new)):
        return None
    owner, hop = index.ftrace_owners.get(func), x86.branch(new, site)
    dest = _name(symbols, hop.dest) if hop else ""
    if hop is None:
        judged: Judged = (True, "ftrace site back to NOP", owner)
    elif hop.dest not in index.ftrace_trampolines:
        judged = _no(f"ftrace site calls {dest}, not an ftrace or BPF trampoline")
    elif owner is None:
        owners = "ftrace ops, BPF link or livepatch"
        judged = _no(f"ftrace site calls {dest} but no {owners} owns this function")
    elif (direct := index.ftrace_direct.get(func)) is not None and hop.dest != direct:
        reached = _name(symbols, direct)
        judged = _no(f"ftrace site calls {dest}, not {reached}, which its direct call reaches")
    else:
        judged = (True, f"ftrace site calls {dest} for {owner}", owner)
    return _verdict(site, old, new, judged, "ftrace-site", symbols)


def _ftrace_caller(
    run: ChangedRun, view: _View, targets: Mapping[int, str], label: str, symbols: Symbols
) -> Verdict | None:
    """ftrace retargets the call at `ftrace_call`/`ftrace_regs_call` when the set of ftrace
    users changes: ftrace_stub, the ops list function, or one ops' own function."""
    loc = symbols.lookup(run.address)
    assert loc is not None
    site = loc.symbol.address
    old, new = view.get(site, 5, False), view.get(site, 5, True)
    if old is None or new is None or not run.end <= site + 5:
        return None
    hop = x86.branch(new, site)
    if hop is None or new[0] != x86.CALL:
        judged: Judged = _no(f"{label} no longer holds a call")
    elif hop.dest in targets:
        judged = (
            True,
            f"{label} calls {targets[hop.dest]}, as ftrace does for its current users",
            targets[hop.dest],
        )
    else:
        judged = _no(
            f"{label} calls {_name(symbols, hop.dest)}, which is not ftrace's own "
            "dispatch or a registered ftrace ops"
        )
    return _verdict(site, old, new, judged, "ftrace-caller", symbols)


def classify(
    run: ChangedRun, index: SiteIndex, symbols: Symbols, kernel_read: KernelRead | None = None
) -> Verdict:
    """Explained if the run is a legitimate state of the site it lies in; else tampering.

    `kernel_read(address, size)`, if given, reads a jump label's static key (to check the site
    holds what the key calls for) and a site's unchanged bytes the run carries no context for."""
    return _classify(run, _View(run, kernel_read), index, symbols)


def _classify(run: ChangedRun, view: _View, index: SiteIndex, symbols: Symbols) -> Verdict:
    """classify() a run, or a piece of the run `view` was made for."""
    kernel_read = view.read
    for site in index.overlapping(run.address, run.end):
        span = _span(site, view)
        if site.address + span <= run.address:
            continue
        old, new = view.get(site.address, span, False), view.get(site.address, span, True)
        at = f"{site.kind.replace('-', ' ')} at {_name(symbols, site.address)}"
        if old is None or new is None:
            judged = _no(f"the {at} cannot be seen whole (the run has no context)")
        elif run.address < site.address or run.end > site.address + span:
            judged = _no(f"changed bytes at {_name(symbols, run.address)} reach outside the {at}")
        else:
            keys = index.keys or PlainKeys(symbols)
            judged = _JUDGES[site.kind](site, old, new, symbols, kernel_read, keys)
            return _verdict(site.address, old, new, judged, site.kind, symbols)
        technique = _technique(run.old, run.new, run.address, symbols)
        return _verdict(run.address, run.old, run.new, judged, technique, symbols)
    ftrace = _ftrace(run, view, index, symbols)
    if ftrace is not None:
        return ftrace
    where = _name(symbols, run.address)
    if any(b == x86.INT3 != a for a, b in zip(run.old, run.new, strict=True)):
        why = f"INT3 written at {where} where no kprobe is registered"
    else:
        why = f"{len(run.old)} bytes changed at {where}, in no patch site the kernel keeps"
    old, new = view.clip(run.address, run.end + 8, False), view.clip(run.address, run.end + 8, True)
    if hop := x86.branch(new, run.address):
        why += f": now {'calls' if hop.kind == 'call' else 'jumps to'} {_name(symbols, hop.dest)}"
    return _verdict(run.address, old, new, _no(why), "", symbols)


def explain(
    runs: Iterable[ChangedRun],
    index: SiteIndex,
    symbols: Symbols,
    kernel_read: KernelRead | None = None,
) -> list[Verdict]:
    """classify() every run, cut first at site boundaries: neighbouring sites that diff_runs
    merged into one run, and the bytes between them, are judged apart."""
    verdicts = []
    for run in runs:
        view, cuts = _View(run, kernel_read), {run.address, run.end}
        for site in index.overlapping(run.address, run.end):
            cuts.update((site.address, site.address + _span(site, view)))
        edges = sorted(c for c in cuts if run.address <= c <= run.end)
        first, old = run.window(False)
        _, new = run.window(True)
        for lo, hi in itertools.pairwise(edges):
            differ = [i for i in range(lo - first, hi - first) if old[i] != new[i]]
            if differ:
                s, e = differ[0], differ[-1] + 1
                piece = ChangedRun(first + s, old[s:e], new[s:e])
                verdicts.append(_classify(piece, view, index, symbols))
    return verdicts
