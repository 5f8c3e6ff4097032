"""What a baseline records of its boot's modules so that a check of the same boot need not
look them up again: where each module's struct module was, and struct module's layout (the
field offsets vmlinux BTF gives). A check is refused for any other boot (store.check_boot), and
within a boot neither vmlinux's BTF nor a loaded module's struct moves; a module unloaded and
loaded again is read where its struct now is. Both live in the signed manifest's summary.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from patchguard.integrity.module_regions import KnownStructs
from patchguard.integrity.store import Manifest

if TYPE_CHECKING:
    from patchguard.kernel.module_layout import Layout

# {name: [its /proc/modules address, its struct module's address]} (hex strings: kernel
# addresses do not fit JSON's 2**53)
MODULE_STRUCTS = "module_structs"
# {field: offset in struct module or null}, module_layout.Layout's fields
MODULE_LAYOUT = "module_layout"


def module_summary(structs: KnownStructs, layout: Layout | None) -> dict[str, object]:
    """The summary entries capture writes (none for a kernel without live modules)."""
    if not structs or layout is None:
        return {}
    return {
        MODULE_STRUCTS: {n: [f"{at:#x}", f"{struct:#x}"] for n, (at, struct) in structs.items()},
        MODULE_LAYOUT: dataclasses.asdict(layout),
    }


def known_structs(manifest: Manifest) -> KnownStructs:
    """The baseline's module structs, for live_modules: a module still at its /proc/modules
    address is looked for where its struct was, and kallsyms is read only for the others.
    live_modules takes a struct only if the struct read there names the module and starts its
    text at that address, so an entry that no longer holds costs one read, never a wrong
    module. An entry that does not parse is left out."""
    raw = manifest.summary.get(MODULE_STRUCTS, {})
    pairs = {str(n): _addresses(p) for n, p in raw.items()} if isinstance(raw, dict) else {}
    return {name: pair for name, pair in pairs.items() if pair is not None}


def _addresses(pair: object) -> tuple[int, int] | None:
    """Two hex addresses, as module_summary writes them; anything else None."""
    if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
        return None
    try:
        return int(pair[0], 16), int(pair[1], 16)
    except ValueError:
        return None


def recorded_layout(manifest: Manifest) -> Layout | None:
    """struct module's layout as the baseline recorded it, or None (no modules then, or a
    record that does not parse: live_modules derives it from BTF)."""
    raw = manifest.summary.get(MODULE_LAYOUT)
    if not isinstance(raw, dict):
        return None
    from patchguard.kernel.module_layout import Layout

    names = {f.name for f in dataclasses.fields(Layout)}
    if set(raw) != names or not all(_offset(raw[n], n in REQUIRED) for n in names):
        return None
    return Layout(**raw)


REQUIRED = frozenset({"name", "text_base", "text_size"})  # the others absent on some kernels


def _offset(value: object, required: bool) -> bool:
    if value is None:
        return not required
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 16
