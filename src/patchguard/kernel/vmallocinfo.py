"""/proc/vmallocinfo: every vmalloc allocation with the function that made it. The modules
surface counts the loader's allocations in it; attribution names the allocation that holds an
address no listed module owns. Where %pK hashes the addresses (kptr_restrict 0), runs of
adjacent areas are placed at their real addresses from addresses known to start areas."""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate

from patchguard.kernel.memory import KERNEL_SPACE  # %pK prints hashed or zeroed values below it

VMALLOCINFO = "/proc/vmallocinfo"

# vmallocinfo names the caller of each allocation, not the module. The loader's memory is
# allocated from these functions, depending on the kernel: module_alloc() called from
# move_module() (inlined into layout_and_allocate()/load_module()) before 6.4;
# module_memory_alloc() from 6.4, through execmem_alloc() from 6.10.
LOADER_CALLERS = frozenset(
    {"load_module", "layout_and_allocate", "move_module", "module_alloc", "module_memory_alloc"}
)


@dataclass(frozen=True)
class VmallocArea:
    """One line of /proc/vmallocinfo."""

    start: int
    end: int
    size: int
    caller: str | None  # function name of the caller; None for unpurged and vm_map_ram areas
    caller_module: str | None = None  # "[mod]" after the caller: the module that allocated
    kinds: tuple[str, ...] = ()  # vmalloc, vmap, ioremap, user, ...; "unpurged", "vm_map_ram"
    pages: int | None = None

    @property
    def real_addresses(self) -> bool:
        return self.start >= KERNEL_SPACE

    def __str__(self) -> str:
        caller = self.caller or "no caller"
        module = f" [{self.caller_module}]" if self.caller_module else ""
        return f"vmalloc {self.start:#x}+{self.size:#x} by {caller}{module}"


_VMALLOC_LINE = re.compile(r"^0x(?P<start>[0-9a-fA-F]+)-0x(?P<end>[0-9a-fA-F]+)\s+(?P<size>\d+)")
_CALLER = re.compile(r"^(?P<name>[^\s+]+)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+$")
_PAGES = re.compile(r"^pages=(\d+)$")


def _vmalloc_area(line: str) -> VmallocArea | None:
    found = _VMALLOC_LINE.match(line)
    if found is None:
        return None
    words = line[found.end() :].split()
    caller = module = None
    if words and (called := _CALLER.match(words[0])):
        caller = called["name"]
        words = words[1:]
        if words and words[0].startswith("[") and words[0].endswith("]"):
            module, words = words[0][1:-1], words[1:]
    elif words and words[0].startswith("0x"):  # a caller no symbol covers: a hidden module's
        caller, words = words[0], words[1:]
    pages = next((int(p[1]) for w in words if (p := _PAGES.match(w))), None)
    if words[:2] == ["unpurged", "vm_area"]:
        words = ["unpurged"]
    kinds = tuple(w for w in words if "=" not in w)
    start, end = int(found["start"], 16), int(found["end"], 16)
    return VmallocArea(start, end, int(found["size"]), caller, module, kinds, pages)


def parse_vmallocinfo(text: str) -> list[VmallocArea]:
    """/proc/vmallocinfo: `0x<start>-0x<end> <size> [<caller %pS>] [pages=N] [phys=A] [kinds]
    [N0=n]`, plus `... unpurged vm_area` and `... vm_map_ram` lines without a caller."""
    return [a for a in map(_vmalloc_area, text.splitlines()) if a is not None]


def area_holding(areas: Sequence[VmallocArea], address: int) -> VmallocArea | None:
    """The allocation `address` lies in; `areas` sorted by start (vmallocinfo's order)."""
    i = bisect.bisect_right([a.start for a in areas], address) - 1
    return areas[i] if i >= 0 and address < areas[i].end else None


def distinct(areas: Iterable[VmallocArea]) -> list[VmallocArea]:
    """Each area once, in address order where the addresses are real. vmallocinfo is printed
    4 KiB a read(2), and before 6.9 the kernel finds its place again by line number: an area
    allocated meanwhile below that place prints one line twice (seen in the lab, 6.1)."""
    kept = {a.start: a for a in areas}
    return sorted(kept.values(), key=lambda a: a.start) if kept else []


def runs(areas: Sequence[VmallocArea]) -> list[list[VmallocArea]]:
    """Areas that follow one another in memory: one's end is the next one's start. This holds
    for hashed addresses too: %pK hashes one address the same way all through a boot."""
    by_start = {a.start: a for a in areas}
    ends = {a.end for a in areas}
    found = []
    for head in (a for a in areas if a.start not in ends):
        run = [head]
        while (after := by_start.get(run[-1].end)) is not None and len(run) <= len(areas):
            run.append(after)
        found.append(run)
    return found


def _offsets(run: Sequence[VmallocArea]) -> list[int]:
    return list(accumulate((a.size for a in run[:-1]), initial=0))


def _consistent(start: int, run: Sequence[VmallocArea], bases: Sequence[int]) -> bool:
    """No base inside the run's span falls anywhere but at the start of one of its areas."""
    starts = {start + o for o in _offsets(run)}
    end = start + sum(a.size for a in run)
    return all(b in starts for b in bases if start <= b < end)


def run_start(
    run: Sequence[VmallocArea],
    bases: Sequence[int],
    starts: Sequence[int] = (),
    claimed: frozenset[int] = frozenset(),
) -> int | None:
    """Where a run of hashed areas lies, from real addresses known to start areas (`bases`,
    modules' bases) or that may (`starts`, section addresses), leaving out those `claimed` by
    runs placed already: the start at which most of the run's areas (more than half, two at
    least) begin at such an address and no base contradicts; None if two such starts tie.
    Module sizes repeat, so two areas can line up with two bases by chance (in the lab, a
    4-area run on 6.12 was placed on 9p's and 9pnet_virtio's bases that way)."""
    offsets = _offsets(run)
    known = (set(bases) | set(starts)) - claimed
    votes = Counter(k - o for k in known for o in offsets)
    ranked = [
        (n, s)
        for s, n in votes.items()
        if n >= 2 and 2 * n > len(run) and _consistent(s, run, bases)
    ]
    ranked.sort(reverse=True)
    if not ranked or (len(ranked) > 1 and ranked[1][0] == ranked[0][0]):
        return None
    return ranked[0][1]


def _at(run: Sequence[VmallocArea], start: int) -> list[VmallocArea]:
    return [
        replace(a, start=start + o, end=start + o + a.size)
        for a, o in zip(run, _offsets(run), strict=True)
    ]


def placed(
    areas: Sequence[VmallocArea], bases: Sequence[int], starts: Sequence[int] = ()
) -> list[VmallocArea]:
    """Hashed areas (kptr_restrict 0) at their real addresses, where run_start places their
    run; areas of runs it cannot place are left out. A run that ties is tried again once
    others are placed: the addresses they start vote no more (two runs of the same sizes,
    one of them placed by a third module's base, in the lab on 6.1)."""
    found: list[VmallocArea] = []
    left = runs(areas)
    while left:
        claimed = frozenset(a.start for a in found)
        now = [(run, run_start(run, bases, starts, claimed)) for run in left]
        found += [a for run, start in now if start is not None for a in _at(run, start)]
        still = [run for run, start in now if start is None]
        if len(still) == len(left):
            break
        left = still
    return sorted(found, key=lambda a: a.start)
