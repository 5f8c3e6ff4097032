"""Code integrity: take the baseline of kernel text and the tables the kernel patches itself
through, and later compare the live kernel against it. An unchanged page costs one hash; every
changed byte run is classified by engine/explain.py as explained (a jump label, static call,
ftrace site or kprobe with a visible owner) or tampering."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchguard import __version__
from patchguard.findings import Disposition, Finding, Gap, Severity
from patchguard.integrity.baseline import PAGE, Baseline, BaselineMeta, Region, page_hashes
from patchguard.integrity.module_records import known_structs, module_summary, recorded_layout
from patchguard.integrity.module_regions import (
    CALLS,
    JUMPS,
    NAME,
    TEXT,
    KnownStructs,
    is_text,
    live_modules,
    module_of,
    region_bounds,
    stale_modules,
)
from patchguard.integrity.store import (
    Manifest,
    RegionEntry,
    check_boot,
    file_stamp,
    read_manifest,
    read_region,
    verify_stored,
)
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.kallsyms import X86_64_DEFAULT_STEXT
from patchguard.kernel.memory import KernelMemory, read_chunks, sha256_of
from patchguard.scan import ScanReport, SurfaceResult, report_for
from patchguard.surfaces.base import AnyState, SurfaceState

# What explains a change (explain.py, the x86 decoders, the syscall dispatch, the tracepoint
# keys) is imported only once something changed: a check with nothing changed, the usual one,
# does not pay for it (tests/unit/test_lazy_imports.py holds it to that).
if TYPE_CHECKING:
    from patchguard.integrity.explain import ChangedRun, SiteIndex, Verdict
    from patchguard.integrity.keyed_pages import KeyedPages
    from patchguard.integrity.owners import Owners
    from patchguard.kernel.module_layout import Layout
    from patchguard.x86.dispatch import DispatchEntry
    from patchguard.x86.inputs import KernelRead, Symbols

SYSCALL_TABLES = ("sys_call_table", "ia32_sys_call_table", "x32_sys_call_table")

# What a baseline keeps: (region name, kallsyms range name). Text first: it is what `check`
# compares; the tables after it are the trusted source of where the kernel may patch itself.
REGIONS = (
    ("core_text", "text"),
    ("jump_table", "jump_table"),
    ("static_call_sites", "static_call_sites"),
    ("rodata", "rodata"),
)


def capture_region(memory: KernelMemory, name: str, start: int, end: int) -> Region:
    data = b"".join(chunk for _, chunk in read_chunks(memory, start, end))
    return Region(name, start, data, page_hashes(data))


def static_call_trampolines(kernel: Kernel) -> list[tuple[str, int]]:
    """Every `__SCT__*` trampoline in kallsyms: where a static call may legitimately jump."""
    return [(s.name, s.address) for s in kernel.kallsyms.with_prefix("__SCT__") if s.is_text]


def kaslr_offset(kernel: Kernel) -> int:
    stext = kernel.kallsyms.address_of("_stext")
    return (stext - X86_64_DEFAULT_STEXT) if stext is not None else 0


@dataclass(frozen=True)
class Capture:
    baseline: Baseline
    gaps: list[Gap]


def _layout(kernel: Kernel) -> Layout:
    """struct module's layout, as live_modules derived it from vmlinux BTF (cached there)."""
    from patchguard.kernel.module_layout import layout

    return kernel.vmlinux_btf.derived(layout)


def capture(kernel: Kernel) -> Capture:
    """Read everything a baseline keeps from the live kernel; what cannot be read is a gap."""
    memory = kernel.memory()
    syms = kernel.kallsyms
    regions: dict[str, Region] = {}
    gaps: list[Gap] = []
    for region, range_name in REGIONS:
        bounds = syms.range(range_name)
        if bounds is None:
            gaps.append(
                Gap(
                    NAME,
                    region,
                    f"kallsyms does not bound it ({range_name} start "
                    "or end symbol not visible: CONFIG_KALLSYMS_ALL)",
                )
            )
            continue
        try:
            regions[region] = capture_region(memory, region, bounds.start, bounds.end)
        except KernelAccessError as exc:
            gaps.append(Gap(NAME, region, str(exc)))
    structs: KnownStructs = {}
    modules = live_modules(kernel, structs)
    gaps += modules.gaps
    for module in modules.modules.values():
        for region, start, end in region_bounds(module):
            try:
                regions[region] = capture_region(memory, region, start, end)
            except KernelAccessError as exc:
                gaps.append(Gap(NAME, region, str(exc)))
    if "core_text" not in regions:
        raise KernelAccessError(
            "baseline", "core kernel text could not be read: " + "; ".join(g.reason for g in gaps)
        )
    meta = BaselineMeta(
        boot_id=kernel.boot_id(),
        kernel_release=os.uname().release,
        kaslr_offset=kaslr_offset(kernel),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        host=os.uname().nodename,
        reader=memory.name,
        patchguard_version=__version__,
    )
    dispatch = syscall_dispatch(kernel, regions["core_text"])
    sites = {
        "static_call_trampolines": [[n, a] for n, a in static_call_trampolines(kernel)],
        "syscall_dispatch": [
            [e.function, e.insn, e.size, e.lo, e.hi, e.target, e.target_name] for e in dispatch
        ],
    }
    summary = {
        "syscall_dispatch": {
            "functions": list(dict.fromkeys(e.function for e in dispatch)),
            "syscalls_mapped": sum(e.lo == e.hi for e in dispatch),
        },
        **module_summary(structs, _layout(kernel) if structs else None),
    }
    return Capture(Baseline(meta, regions, sites, summary), gaps)


def syscall_dispatch(kernel: Kernel, text: Region) -> list[DispatchEntry]:
    """The direct jumps of x64_sys_call and friends (kernels that dispatch through code), each
    with the syscall numbers it serves, from the captured text."""
    from patchguard.x86.dispatch import DISPATCH_FUNCTIONS, KallsymsNames, dispatch_entries

    syms = kernel.kallsyms
    entries: list[DispatchEntry] = []
    for function in DISPATCH_FUNCTIONS:
        start = syms.address_of(function)
        end = syms.next_address(start) if start is not None else None
        if start is None or end is None or not (text.start <= start < end <= text.end):
            continue
        code = text.data[start - text.start : end - text.start]
        entries += dispatch_entries(function, code, start, KallsymsNames(syms))
    return entries


def dispatch_of(manifest: Manifest) -> list[DispatchEntry]:
    from patchguard.x86.dispatch import DispatchEntry

    raw = manifest.sites.get("syscall_dispatch", [])
    assert isinstance(raw, list)
    return [
        DispatchEntry(str(f), int(i), int(n), int(lo), int(hi), int(t), str(name))
        for f, i, n, lo, hi, t, name in raw
    ]


def changed_pages(
    memory: KernelMemory, start: int, page_digests: bytes, size: int
) -> dict[int, bytes]:
    """The live bytes of each page whose SHA-256 differs from the baseline's (`page_digests`:
    32-byte digests back to back), by page index. An unchanged page costs one read (in READ_SIZE
    chunks) and one hash."""
    changed: dict[int, bytes] = {}
    sha256 = hashlib.sha256
    for at, chunk in read_chunks(memory, start, start + size):
        first = (at - start) // PAGE
        view = memoryview(chunk)
        # One comparison per chunk (its pages' digests against the baseline's, joined); the
        # pages are told apart only in a chunk where something changed.
        digests = b"".join(
            [sha256(view[i : i + PAGE]).digest() for i in range(0, len(chunk), PAGE)]
        )
        expected = page_digests[32 * first : 32 * first + len(digests)]
        if digests == expected:
            continue
        for i in range(0, len(digests), 32):
            if digests[i : i + 32] != expected[i : i + 32]:
                changed[first + i // 32] = bytes(view[i // 32 * PAGE : (i // 32 + 1) * PAGE])
    return changed


def changed_region(memory: KernelMemory, entry: RegionEntry) -> dict[int, bytes] | None:
    """changed_pages of one region, read first as one SHA-256 stream against the signed
    manifest's digest of the whole region. Nearly every region is unchanged nearly every time,
    and then costs one hash call per READ_SIZE read instead of one per 4 KiB page (an emulated
    guest's check spent a tenth of its hashing on those calls). Only a region whose digest
    differs is read again, page by page. None: that second read found every page as the
    baseline has it, so the region changed while it was read and no bytes are left to judge."""
    if sha256_of(memory, entry.start, entry.start + entry.size) == entry.sha256:
        return {}
    return changed_pages(memory, entry.start, entry.page_digests, entry.size) or None


def unsteady(region: str) -> Gap:
    """A region that differed from the baseline in one read and matched it in the next."""
    return Gap(
        NAME,
        f"region {region}",
        "changed while read: its SHA-256 differed from the baseline's, then every page "
        "matched it when read again, so no changed bytes were left to judge",
    )


def page_spans(pages: dict[int, bytes]) -> Iterator[tuple[int, bytes]]:
    """Runs of consecutive changed pages joined, so a patch across a page boundary is one
    change: (first page index, bytes)."""
    run: list[int] = []
    for page in sorted(pages):
        if run and page != run[-1] + 1:
            yield run[0], b"".join(pages[p] for p in run)
            run = []
        run.append(page)
    if run:
        yield run[0], b"".join(pages[p] for p in run)


# --- check --------------------------------------------------------------------------------


def site_index(path: Path, manifest: Manifest, owners: Owners, stale: set[str]) -> SiteIndex:
    """Where the kernel may patch itself, from the baseline's own copies of its tables and of
    the tables of its modules still where they were (the live tables are verified as regions
    like any other read-only data)."""
    from patchguard.integrity.explain import SiteIndex
    from patchguard.x86.insn import (
        JumpEntry,
        StaticCallSite,
        decode_jump_table,
        decode_static_call_sites,
    )

    trampolines = manifest.sites.get("static_call_trampolines", [])
    assert isinstance(trampolines, list)
    jumps: list[JumpEntry] = []
    calls: list[StaticCallSite] = []
    for entry in manifest.regions.values():
        if module_of(entry.name) in stale:
            continue
        if entry.name == "jump_table" or entry.name.startswith(JUMPS):
            jumps += decode_jump_table(read_region(path, entry.name, manifest), entry.start)
        elif entry.name == "static_call_sites" or entry.name.startswith(CALLS):
            raw = read_region(path, entry.name, manifest)
            calls += decode_static_call_sites(raw, entry.start)
    return SiteIndex(
        jump_entries=jumps,
        static_call_sites=calls,
        trampolines=[(str(n), int(a)) for n, a in trampolines],
        ftrace_owners=owners.ftrace,
        ftrace_trampolines=owners.trampolines,
        kprobes=owners.kprobes,
        ftrace_callers=owners.callers,
        ftrace_direct=owners.direct,
    )


def _hex(data: bytes) -> str:
    return data.hex(" ")


def verdict_finding(v: Verdict) -> Finding:
    evidence: dict[str, str | int | bool | list[str] | list[int] | None] = {
        "address": f"{v.address:#x}",
        "old": _hex(v.old),
        "new": _hex(v.new),
        "disasm_old": v.disasm_old,
        "disasm_new": v.disasm_new,
        "owner": v.owner,
    }
    if v.explained:
        return Finding(
            NAME,
            v.technique,
            Severity.INFO,
            v.location,
            v.explanation,
            Disposition.EXPLAINED,
            None,
            evidence,
        )
    return Finding(
        NAME,
        v.technique,
        Severity.CRITICAL,
        v.location,
        v.explanation,
        Disposition.TAMPERING,
        "T1014",
        evidence,
    )


def dispatch_finding(
    v: Verdict, dispatch: list[DispatchEntry], read: KernelRead, symbols: Symbols
) -> Finding | None:
    """A tampered jump inside x64_sys_call (or friends) said as what it is: a syscall hook."""
    from patchguard.x86.dispatch import redirected

    if v.explained:
        return None
    # only the bytes that changed: the verdict's context can reach the next dispatch jump
    differ = [i for i, (a, b) in enumerate(zip(v.old, v.new, strict=False)) if a != b]
    end = v.address + (differ[-1] + 1 if differ else 1)
    hit = redirected(dispatch, v.address, end, read, symbols)
    if hit is None:
        return None
    entry, sentence = hit
    base = verdict_finding(v)
    evidence = {
        **base.evidence,
        "syscall": entry.syscall,
        "nr": entry.nr,
        "dispatch": entry.function,
        "baseline_target": entry.target_name,
    }
    return Finding(
        NAME,
        "syscall-hook",
        Severity.CRITICAL,
        entry.describe(),
        sentence,
        Disposition.TAMPERING,
        "T1014",
        evidence,
    )


def ipmodify_finding(v: Verdict, owners: Owners, symbols: Symbols) -> Finding | None:
    """A function's ftrace site calling into an IPMODIFY ftrace ops whose handler is in a
    module (not a livepatch): the ftrace-rootkit method, named as such."""
    loc = symbols.lookup(v.address)
    if v.explained or loc is None or loc.offset > 4:
        return None
    handler = owners.ipmodify_hooks.get(loc.symbol.address)
    if handler is None:
        return None
    base = verdict_finding(v)
    return Finding(
        NAME,
        "ftrace-ipmodify-hook",
        Severity.CRITICAL,
        base.subject,
        f"the ftrace site of {loc.symbol.name} now calls an IPMODIFY ftrace ops whose handler "
        f"is {handler}: a module can send every call of {loc.symbol.name} elsewhere, the "
        "method of ftrace rootkits",
        Disposition.TAMPERING,
        "T1014",
        {**base.evidence, "handler": handler},
    )


def _table_findings(
    entry: RegionEntry, run: ChangedRun, kernel: Kernel, old: bytes
) -> list[Finding]:
    """A change inside a table the kernel never rewrites after boot (jump table, static call
    sites, rodata): someone redirected what the kernel trusts. In a syscall table, each
    changed slot is said as the syscall it redirects."""
    slots = _syscall_slots(entry, run, kernel, old)
    if slots:
        return slots
    where = kernel.attributor().lookup(run.address)
    return [
        Finding(
            NAME,
            "patched-table",
            Severity.CRITICAL,
            f"{entry.name}+{run.address - entry.start:#x}" + (f" ({where})" if where else ""),
            f"read-only kernel data in {entry.name} changed: {len(run.old)} bytes at "
            f"{run.address:#x} differ from the baseline",
            Disposition.TAMPERING,
            "T1014",
            {"address": f"{run.address:#x}", "old": _hex(run.old), "new": _hex(run.new)},
        )
    ]


def _syscall_slots(
    entry: RegionEntry, run: ChangedRun, kernel: Kernel, old: bytes
) -> list[Finding]:
    syms = kernel.kallsyms
    for table in SYSCALL_TABLES:
        start = syms.address_of(table)
        end = syms.address_after(start) if start is not None else None
        if start is None or end is None or not start <= run.address < end:
            continue
        first = (run.address - start) // 8
        last = (run.address + max(len(run.old), 1) - 1 - start) // 8
        return [
            _slot_finding(entry, kernel, old, table, start, nr) for nr in range(first, last + 1)
        ]
    return []


def _slot_finding(
    entry: RegionEntry, kernel: Kernel, old: bytes, table: str, start: int, nr: int
) -> Finding:
    from patchguard.x86.dispatch import TABLE_DISPATCH

    at = start + 8 * nr
    was = int.from_bytes(old[at - entry.start : at - entry.start + 8], "little")
    now = int.from_bytes(kernel.memory().read(at, 8), "little")
    names = kernel.attributor()
    was_loc, now_loc = names.lookup(was), names.lookup(now)
    said = f"{table} entry {nr} redirected from {names.name(was)} to {names.name(now)}"
    dispatch = TABLE_DISPATCH.get(table)
    if dispatch is not None and kernel.symbol_address(dispatch) is not None:
        said += (
            f". This kernel dispatches system calls through code ({dispatch}), not through "
            f"{table}: the patched entry is never called, but someone wrote it"
        )
    return Finding(
        NAME,
        "syscall-hook",
        Severity.CRITICAL,
        f"{table}[{nr}]",
        said,
        Disposition.TAMPERING,
        "T1014",
        {
            "address": f"{at:#x}",
            "nr": nr,
            "old": f"{was:#x}",
            "new": f"{now:#x}",
            "baseline_target": str(was_loc) if was_loc else None,
            "target": str(now_loc) if now_loc else None,
            "live": dispatch is None or kernel.symbol_address(dispatch) is None,
        },
    )


@dataclass(frozen=True)
class SyscallDispatch:
    """How this kernel dispatches system calls, as `check` verified it."""

    method: str  # "code" (x64_sys_call and friends, 6.9+ and backports) or "sys_call_table"
    functions: tuple[str, ...]
    syscalls_mapped: int  # dispatch jumps resolved to one syscall number


def dispatch_record(kernel: Kernel, manifest: Manifest) -> SyscallDispatch:
    """From the baseline's summary: the dispatch rows themselves are read only when text
    changed (parsing them would be most of an unchanged check's bookkeeping)."""
    summary = manifest.summary.get("syscall_dispatch", {})
    assert isinstance(summary, dict)
    functions = tuple(str(f) for f in summary.get("functions", []))
    if functions:
        return SyscallDispatch("code", functions, int(summary.get("syscalls_mapped", 0)))
    table = kernel.kallsyms.address_of("sys_call_table")
    return SyscallDispatch("sys_call_table" if table else "unknown", (), 0)


@dataclass(frozen=True)
class CheckOutcome:
    state: AnyState
    findings: list[Finding]


def verify(
    kernel: Kernel, path: Path, public_key: bytes, keyed: KeyedPages | None = None
) -> CheckOutcome:
    """Compare the live kernel with the signed baseline at `path` (BaselineError if it cannot be
    trusted or belongs to another boot). `keyed`: the guard's sweeps, hashed in the kernel."""
    stamp = file_stamp(path)  # before the read: a file replaced after it differs next sweep
    known = keyed.verified_manifest(stamp, public_key) if keyed is not None else None
    manifest = known or read_manifest(path, public_key, stored=False)
    check_boot(manifest, kernel.boot_id(), os.uname().release, path)
    if keyed is None:
        modules = live_modules(kernel, known_structs(manifest), offsets=recorded_layout(manifest))
    else:
        modules = keyed.live_modules(kernel)
    stale, findings = stale_modules(manifest.regions, modules.modules)
    entries = [e for e in manifest.regions.values() if module_of(e.name) not in stale]
    # The stored region bytes are verified beside the kernel reads (both mostly wait on the
    # kernel or hash with the GIL released); any region data is used only after it passed.
    # The guard's sweeps skip both reads while the file is the one they verified
    # (keyed_pages.py: verified_manifest).
    stored = _Beside(functools.partial(verify_stored, path, manifest)) if known is None else None
    try:
        changed, unsteady_regions = _changed(kernel.memory(), entries, keyed)
    finally:
        if stored is not None:
            stored.join()
    if stored is not None:
        stored.result()
    if keyed is not None:
        keyed.note_verified(stamp, public_key, manifest)
    gaps: list[Gap] = [*modules.gaps, *unsteady_regions]
    counts = {
        "bytes": sum(e.size for e in entries),
        "pages": sum(len(e.page_sha256) for e in entries),
        "changed_pages": sum(len(c) for c in changed.values()),
        "modules": sum(e.name.startswith(TEXT) for e in entries),
    }
    judge = _Judge(kernel, path, manifest, stale)
    for entry in entries:
        if changed[entry.name]:
            again = functools.partial(_judge_again, judge, kernel.memory(), entry)
            findings += settled(judge.entry(entry, changed[entry.name]), again)
    gaps += judge.gaps
    how = dispatch_record(kernel, manifest)
    counts["syscalls_mapped"] = how.syscalls_mapped
    counts["explained"] = sum(f.disposition == Disposition.EXPLAINED for f in findings)
    counts["tampering"] = sum(f.disposition == Disposition.TAMPERING for f in findings)
    return CheckOutcome(SurfaceState(NAME, [how], counts, gaps), findings)


# How long a second look at code judged as tampering waits: text_poke_bp() writes an INT3
# first and the rest of the instruction after the CPUs have synced, microseconds apart.
SECOND_LOOK_AFTER = 0.05


def settled(first: list[Finding], again: Callable[[], list[Finding]]) -> list[Finding]:
    """A region whose changes include tampering is read and judged once more, a moment later:
    a patch in flight (a jump label or static call another process turned on while the check
    read, caught between text_poke_bp's steps) is then seen whole and explained. What the
    second look judges counts; tampering that held says so in its evidence."""
    if not any(f.disposition == Disposition.TAMPERING for f in first):
        return first
    time.sleep(SECOND_LOOK_AFTER)
    return [_held(f) if f.disposition == Disposition.TAMPERING else f for f in again()]


def _held(finding: Finding) -> Finding:
    return replace(finding, evidence={**finding.evidence, "second_look": "held"})


def _judge_again(judge: _Judge, memory: KernelMemory, entry: RegionEntry) -> list[Finding]:
    return judge.entry(entry, changed_pages(memory, entry.start, entry.page_digests, entry.size))


class _Judge:
    """Judges the changed pages of one region after another. Who may patch code (the ebpf and
    tracing surfaces' owners) and the baseline's site index are read at the first change, and
    only then: their imports are a third of a clean check's process."""

    def __init__(self, kernel: Kernel, path: Path, manifest: Manifest, stale: set[str]) -> None:
        self.kernel, self.path, self.manifest, self.stale = kernel, path, manifest, stale
        self.gaps: list[Gap] = []
        self._index: SiteIndex | None = None
        self._owners: Owners | None = None
        self._dispatch: list[DispatchEntry] = []

    def entry(self, entry: RegionEntry, pages: dict[int, bytes]) -> list[Finding]:
        from patchguard.integrity.explain import diff_runs, explain

        old = read_region(self.path, entry.name, self.manifest)
        runs = [
            run
            for first, live in page_spans(pages)
            for run in diff_runs(
                old[first * PAGE : first * PAGE + len(live)], live, entry.start + first * PAGE
            )
        ]
        if not is_text(entry.name):
            return [f for run in runs for f in _table_findings(entry, run, self.kernel, old)]
        index, owners = self._sites()
        read, names = _reader(self.kernel.memory()), self.kernel.attributor()
        return [
            dispatch_finding(v, self._dispatch, read, names)
            or ipmodify_finding(v, owners, names)
            or verdict_finding(v)
            for v in explain(runs, index, names, read)
        ]

    def _sites(self) -> tuple[SiteIndex, Owners]:
        if self._index is None or self._owners is None:
            from patchguard.integrity.owners import current_owners
            from patchguard.integrity.tracepoint_keys import tracepoint_keys

            self._owners, owner_gaps = current_owners(self.kernel)
            self.gaps += owner_gaps
            self._index = site_index(self.path, self.manifest, self._owners, self.stale)
            keys = functools.cache(self._index.jump_keys)
            self._index.keys = tracepoint_keys(self.kernel, self._owners.tracepoint_users, keys)
            self._dispatch = dispatch_of(self.manifest)
        return self._index, self._owners


class _Beside:
    """One call run on a thread of its own beside the caller's work. A plain thread, not
    concurrent.futures: its import (and the logging it pulls in) cost a check's process more
    than the one worker it would give."""

    def __init__(self, call: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        # a daemon: an interrupted check exits without waiting (verify joins it otherwise)
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> None:
        """Wait for the call; raise what it raised."""
        self.join()
        if self._error is not None:
            raise self._error


def _changed(
    memory: KernelMemory, entries: list[RegionEntry], keyed: KeyedPages | None
) -> tuple[dict[str, dict[int, bytes]], list[Gap]]:
    """The changed pages of every region (SHA-256 in user space, or the guard's sweep hashed
    in the kernel, all regions in as few BPF runs as hold them), and a gap for each region
    that changed while it was read (changed_region)."""
    if keyed is None:
        found = {e.name: changed_region(memory, e) for e in entries}
        gaps = [unsteady(name) for name, pages in found.items() if pages is None]
        return {name: pages or {} for name, pages in found.items()}, gaps
    from patchguard.integrity.keyed_pages import Swept

    keyed.begin_sweep()
    swept = keyed.changed_regions(memory, [Swept(e.start, e.page_digests, e.size) for e in entries])
    return {e.name: c for e, c in zip(entries, swept, strict=True)}, []


def _reader(memory: KernelMemory) -> KernelRead:
    def read(address: int, size: int) -> bytes | None:
        try:
            return memory.read(address, size)
        except KernelAccessError:
            return None

    return read


def run_check(kernel: Kernel, path: Path, public_key: bytes) -> ScanReport:
    """`patchguard check` as a report of the same shape as a scan: one surface, kernel_text."""

    started, t0 = datetime.now(UTC), time.perf_counter()
    outcome = verify(kernel, path, public_key)
    result = SurfaceResult(CheckedText(), outcome.state, outcome.findings, time.perf_counter() - t0)
    return report_for(kernel, [result], t0, started, command="check")


class CheckedText:
    """The kernel_text surface as a check's report names it. The surface itself (its scan reads
    ftrace's records and judges every ftrace site) is imported only when asked to collect or
    assess, which a check never does."""

    name = NAME
    title = "Kernel text"

    def collect(self, kernel: Kernel) -> SurfaceState[Any]:
        from patchguard.surfaces.kernel_text import KernelTextSurface

        return KernelTextSurface().collect(kernel)

    def assess(self, state: SurfaceState[Any]) -> list[Finding]:
        from patchguard.surfaces.kernel_text import KernelTextSurface

        return KernelTextSurface().assess(state)
