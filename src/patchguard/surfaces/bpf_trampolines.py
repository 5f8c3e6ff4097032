"""An ftrace site calling code no view names: is it a BPF trampoline, and whose programs?

ftrace writes a CALL to a BPF trampoline into a function's ftrace site when an fentry, fexit or
fmod_ret program attaches (register_ftrace_direct): the kernel's own bytes, so not an inline
hook. But the trampoline, and the programs it runs, are listed by bpf(2) (program ids) and by
/proc/kallsyms (`bpf_trampoline_<key>`, `bpf_prog_<tag>_<name>` [bpf]). When neither lists
them, the code is recognised by its shape (x86/bpf_trampoline.py), its programs are read from
memory (kernel/bpf/tramp_memory.py), and the finding names which view is missing them: bpf(2)'s
program ids, /proc/kallsyms, and the kernel's own bpf_kallsyms list. Programs hidden from
bpf(2) are a rootkit's work, or an agent outside patchguard's view: critical either way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from patchguard.findings import Disposition, Finding
from patchguard.kernel import Kernel
from patchguard.kernel.attribution import Attributor
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.objects import PROG
from patchguard.kernel.bpf.tramp_memory import Ksym, ProgInMemory, TrampolineMemory, offsets
from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.ftrace_records import site_function, variable_address
from patchguard.kernel.kallsyms import SymbolTable
from patchguard.kernel.memory import KernelMemory
from patchguard.kernel.page_cache import PageCache
from patchguard.surfaces.base import finding
from patchguard.surfaces.ebpf.records import BpfLink, BpfProgram
from patchguard.surfaces.tracing.records import DirectCall, DirectProgram
from patchguard.text import visible
from patchguard.x86 import bpf_trampoline as shape

T = TypeVar("T")
CODE = 1024  # bytes of a trampoline read: one program in and out takes ~200


@dataclass(frozen=True)
class HiddenProgram:
    """One program a trampoline runs, as memory has it and as the views list it."""

    prog: int  # struct bpf_prog
    image: int | None
    attach: str  # "fentry" or "fexit": before or after the traced function
    memory: ProgInMemory | None  # None: the struct could not be read
    in_bpf: bool  # bpf(2) lists its id
    in_kallsyms: bool  # /proc/kallsyms shows a [bpf] symbol at its image


@dataclass(frozen=True)
class HiddenTrampoline:
    address: int
    ksym: Ksym | None  # the trampoline image's own symbol, from memory
    in_kallsyms: bool
    programs: tuple[HiddenProgram, ...]
    bpf_listing: bool = True  # bpf(2) listed program ids to us (else in_bpf says nothing)
    # the kernel's bpf_kallsyms list walked in memory: how many symbols it holds, and how many
    # of them /proc/kallsyms shows (None: not walked)
    on_list: int | None = None
    shown_of_list: int | None = None
    list_name: str | None = None  # the name that list gives the trampoline's start


class Identified:
    """What one look found at each target: its trampoline, or None where the code is none.
    kernel_text's ftrace sites and tracing's direct calls reach the same ~80 trampolines of
    an agent here; each is read and decoded once a look (~20 ms), by whichever surface asks
    first, while the other waits on the lock rather than decode them too."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: dict[int, HiddenTrampoline | None] = {}


def identify(
    kernel: Kernel, memory: KernelMemory, targets: Iterable[int]
) -> dict[int, HiddenTrampoline]:
    """The targets that are BPF trampolines, each with its programs and their views, read
    once a look (Kernel.per_look): `memory` must be the kernel's own reader."""
    targets = set(targets)
    if not targets:
        return {}  # a clean kernel: no helper search of kallsyms (~6 ms)
    known = kernel.per_look(Identified)
    with known.lock:
        new = targets - known.found.keys()
        if new:
            fresh = _identify(kernel, memory, new)
            known.found.update((t, fresh.get(t)) for t in new)
        return {t: h for t in targets if (h := known.found[t]) is not None}


def _identify(
    kernel: Kernel, memory: KernelMemory, targets: set[int]
) -> dict[int, HiddenTrampoline]:
    symbols = kernel.kallsyms
    memory = PageCache(memory)  # ~1,800 small reads in ~220 pages: one bpf(2) run a page
    helpers = shape.helper_addresses(trampoline_helpers(symbols))
    found = {}
    for target in targets:
        seen = shape.recognise(_code(memory, target), target, helpers)
        if seen is not None:
            found[target] = seen
    if not found:
        return {}
    views = _Views(kernel, memory, symbols)
    tramps = {t: views.trampoline(seen) for t, seen in found.items()}
    return views.with_list(tramps)


def trampoline_helpers(symbols: SymbolTable) -> dict[str, int]:
    """name -> address of the trampoline helpers this kernel has (two searches of kallsyms by
    prefix: "__bpf_" alone finds ~1,900 lines, the tracepoints' __bpf_trace_* among them)."""
    wanted = set(shape.HELPER_NAMES)
    found = [*symbols.with_prefix("__bpf_prog_"), *symbols.with_prefix("__bpf_tramp_")]
    return {s.name: s.address for s in found if s.name in wanted}


def _code(memory: KernelMemory, address: int) -> bytes:
    """Up to CODE bytes at `address`, not past its page if the next is unreadable."""
    try:
        return memory.read(address, CODE)
    except KernelAccessError:
        try:
            return memory.read(address, 4096 - address % 4096)
        except KernelAccessError:
            return b""


class _Views:
    def __init__(self, kernel: Kernel, memory: KernelMemory, symbols: SymbolTable) -> None:
        self.symbols = symbols
        self.bpf_starts = frozenset(s.address for s in symbols.in_modules({"bpf"}))
        self.ids = _listed_ids()
        self.structs: TrampolineMemory | None = None
        self.head = _list_head(kernel, memory)
        # Without BTF for the structs, the programs are named by their addresses only.
        with contextlib.suppress(KernelAccessError):
            self.structs = TrampolineMemory(memory, offsets(kernel.vmlinux_btf))

    def trampoline(self, seen: shape.TrampolineShape) -> HiddenTrampoline:
        image = seen.image
        ksym = self._read(lambda s: s.image_ksym(image)) if image is not None else None
        programs = tuple(self.program(p) for p in seen.programs)
        shown, listing = self.shown(seen.address), self.ids is not None
        return HiddenTrampoline(seen.address, ksym, shown, programs, listing)

    def with_list(self, tramps: dict[int, HiddenTrampoline]) -> dict[int, HiddenTrampoline]:
        """Each trampoline with what the kernel's bpf_kallsyms list, walked once, says: how
        many symbols it holds, how many /proc/kallsyms shows, and the name of a trampoline
        whose code gave no image to read its own symbol from."""
        head = self.head
        walked = self._read(lambda s: s.listed(head)) if head is not None else None
        if walked is None:
            return tramps
        bpf = {s.name for s in self.symbols.in_modules({"bpf"})}
        shown = sum(name in bpf for name in walked.values())
        return {
            t: replace(h, on_list=len(walked), shown_of_list=shown, list_name=walked.get(t))
            for t, h in tramps.items()
        }

    def program(self, seen: shape.TrampolineProgram) -> HiddenProgram:
        prog = self._read(lambda s: s.program(seen.prog))
        listed = prog is not None and self.ids is not None and prog.prog_id in self.ids
        attach = "fexit" if seen.after_original else "fentry"
        shown = seen.image is not None and self.shown(seen.image)
        return HiddenProgram(seen.prog, seen.image, attach, prog, listed, shown)

    def shown(self, address: int) -> bool:
        return address in self.bpf_starts

    def _read(self, read: Callable[[TrampolineMemory], T]) -> T | None:
        if self.structs is None:
            return None
        try:
            return read(self.structs)
        except KernelAccessError:
            return None


def _ksyms(tramp: HiddenTrampoline) -> list[Ksym]:
    """The symbols memory gives a trampoline and its programs."""
    progs = [p.memory.ksym for p in tramp.programs if p.memory is not None]
    return [k for k in [tramp.ksym, *progs] if k is not None]


def _list_head(kernel: Kernel, memory: KernelMemory) -> int | None:
    """&bpf_kallsyms: bpf_get_kallsym() walks it, its first 64-bit load is the head's next."""
    try:
        head, _ = variable_address(kernel, memory, "bpf_kallsyms", "bpf_get_kallsym", 96, "BPF")
    except KernelAccessError:
        return None
    return head


def _listed_ids() -> frozenset[int] | None:
    """The program ids bpf(2) lists (BPF_PROG_GET_NEXT_ID); None where it refuses to list."""
    try:
        return frozenset(bpf.next_ids(PROG.next_id_cmd, "PROG_GET_NEXT_ID"))
    except bpf.BpfError:
        return None


def site_finding(surface: str, function: str, site: int, tramp: HiddenTrampoline) -> Finding:
    """The finding for an ftrace site calling a trampoline the views do not name."""
    return finding(
        surface,
        "hidden-bpf-trampoline",
        function,
        f"the ftrace site of {function} calls a BPF trampoline at {tramp.address:#x}"
        f"{_named(tramp)} running {_programs(tramp.programs)}; {_views(tramp)}: "
        "BPF programs hidden from bpf(2) are a rootkit's work, or an agent outside "
        "patchguard's view",
        {
            "address": f"{site:#x}",
            "trampoline": f"{tramp.address:#x}",
            "trampoline_symbol": _tramp_name(tramp),
            "trampoline_in_kallsyms": tramp.in_kallsyms,
            "trampoline_on_bpf_kallsyms_list": tramp.ksym.listed if tramp.ksym else None,
            "bpf_lists_programs": tramp.bpf_listing,
            "bpf_kallsyms_list": tramp.on_list,
            "bpf_kallsyms_list_shown": tramp.shown_of_list,
            **_program_evidence(tramp.programs),
        },
        disposition=Disposition.TAMPERING,
    )


def _tramp_name(tramp: HiddenTrampoline) -> str | None:
    name = tramp.ksym.name if tramp.ksym is not None else tramp.list_name
    return visible(name) if name is not None else None


def _named(tramp: HiddenTrampoline) -> str:
    if tramp.ksym is not None:
        return f" (its own image in memory calls it {visible(tramp.ksym.name)})"
    if tramp.list_name is not None:
        return f" (the kernel's bpf_kallsyms list calls it {visible(tramp.list_name)})"
    return ""


def _programs(programs: tuple[HiddenProgram, ...]) -> str:
    return ", ".join(_program(p) for p in programs)


def _program(p: HiddenProgram) -> str:
    m = p.memory
    if m is None:
        return f"{p.attach} program struct bpf_prog {p.prog:#x} (unreadable)"
    attached = f" on {visible(m.attach_to)}" if m.attach_to else ""
    return f"{p.attach} program id {m.prog_id} {visible(m.name)!r} (tag {m.tag}{attached})"


def _views(tramp: HiddenTrampoline) -> str:
    """Which view misses what: bpf(2) ids, /proc/kallsyms, and the kernel's bpf_kallsyms."""
    progs = tramp.programs
    said = []
    if not tramp.bpf_listing:
        said.append("bpf(2) refused to list program ids")
    else:
        unlisted = [p for p in progs if not p.in_bpf]
        said.append(f"bpf(2) lists {len(progs) - len(unlisted)} of these {len(progs)} program ids")
    ksyms = _ksyms(tramp)
    hidden = (not tramp.in_kallsyms) + sum(not p.in_kallsyms for p in progs)
    said.append(f"/proc/kallsyms does not show {hidden} of their {len(progs) + 1} [bpf] symbols")
    on_list = sum(k.listed for k in ksyms)
    said.append(
        f"the kernel's own bpf_kallsyms list holds {on_list} of the {len(ksyms)} symbols "
        f"memory gives them{_filtered(tramp) if hidden and on_list else ''}"
    )
    return "; ".join(said)


def _filtered(tramp: HiddenTrampoline) -> str:
    if tramp.on_list is None or tramp.shown_of_list is None:
        return " (/proc/kallsyms as read here is filtered)"
    return (
        f" (of the {tramp.on_list} symbols on that list, /proc/kallsyms as read here shows "
        f"{tramp.shown_of_list}: it is filtered)"
    )


def _program_evidence(progs: tuple[HiddenProgram, ...]) -> dict[str, list[str] | list[int]]:
    read = [p.memory for p in progs if p.memory is not None]
    return {
        "programs": [_program(p) for p in progs],
        "struct_bpf_progs": [f"{p.prog:#x}" for p in progs],
        "program_images": [f"{p.image:#x}" for p in progs if p.image is not None],
        "program_ids": [m.prog_id for m in read],
        "program_ids_bpf_lists": [p.memory.prog_id for p in progs if p.memory and p.in_bpf],
        "program_symbols": [visible(m.ksym.name) for m in read if m.ksym],
        "program_images_in_kallsyms": [
            f"{p.image:#x}" for p in progs if p.in_kallsyms and p.image is not None
        ],
        "program_symbols_on_bpf_kallsyms_list": [
            visible(m.ksym.name) for m in read if m.ksym and m.ksym.listed
        ],
    }


# --- what a direct ftrace call reaches ----------------------------------------------------------


def direct_calls(
    kernel: Kernel, memory: KernelMemory, current: Mapping[int, int]
) -> list[DirectCall]:
    """What each direct call ftrace's direct_functions records (`current`: site -> target)
    reaches: the BPF trampoline there and the programs it runs, named from memory and held
    against bpf(2), or the code of no trampoline."""
    wanted = {ip: t for ip, t in current.items() if t}
    tramps = identify(kernel, memory, wanted.values()) if wanted else {}
    programs = _bpf_records(kernel, tramps.values())
    names = kernel.attributor()
    return [_direct_call(names, ip, t, tramps.get(t), programs) for ip, t in wanted.items()]


def _direct_call(
    names: Attributor,
    ip: int,
    target: int,
    tramp: HiddenTrampoline | None,
    records: Mapping[int, tuple[BpfProgram, tuple[str, ...]]],
) -> DirectCall:
    function, module = site_function(names, ip)
    reached = names.name(target)
    if tramp is None:
        return DirectCall(function, module, target, reached)
    programs = tuple(_direct_program(p, records) for p in tramp.programs)
    known = _known(tramp, programs, function)
    return DirectCall(function, module, target, reached, _tramp_name(tramp), known, programs)


def _known(tramp: HiddenTrampoline, programs: tuple[DirectProgram, ...], function: str) -> bool:
    """A trampoline the BPF subsystem holds (on the kernel's bpf_kallsyms list and shown by
    /proc/kallsyms), each of whose programs bpf(2) lists and was verified for `function`."""
    listed = tramp.in_kallsyms and (tramp.ksym is None or tramp.ksym.listed)
    return (
        listed
        and bool(programs)
        and all(p.listed and p.record is not None and p.attach_to == function for p in programs)
    )


def _direct_program(
    p: HiddenProgram, records: Mapping[int, tuple[BpfProgram, tuple[str, ...]]]
) -> DirectProgram:
    m = p.memory
    if m is None:
        return DirectProgram(p.prog, None, "", "", p.attach, None, False)
    record, pins = records.get(m.prog_id, (None, ())) if p.in_bpf else (None, ())
    return DirectProgram(p.prog, m.prog_id, m.name, m.tag, p.attach, m.attach_to, p.in_bpf,
                         record, pins)  # fmt: skip


def _bpf_records(
    kernel: Kernel, tramps: Iterable[HiddenTrampoline]
) -> dict[int, tuple[BpfProgram, tuple[str, ...]]]:
    """prog id -> (the ebpf surface's record, the bpffs paths keeping it or its links) of the
    listed programs the trampolines run: what a [[bpf_program]] entry is matched against. Read
    only where there is such a program (the ebpf surface reads every object)."""
    ids = {p.memory.prog_id for t in tramps for p in t.programs if p.memory and p.in_bpf}
    if not ids:
        return {}
    from patchguard.surfaces.ebpf import EbpfSurface

    records = EbpfSurface().collect(kernel).records
    return {p.prog_id: (p, _pins(p, records.links)) for p in records.programs if p.prog_id in ids}


def _pins(prog: BpfProgram, links: Iterable[BpfLink]) -> tuple[str, ...]:
    """Every bpffs path that keeps `prog` alive: its own pins and those of its links."""
    ids = {a.link_id for a in prog.attachments if a.link_id is not None}
    found = set(prog.pins) | {p for link in links if link.link_id in ids for p in link.pins}
    return tuple(sorted(found))
