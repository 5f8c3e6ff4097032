"""Who a changed jump label or static call belongs to: the tracepoint whose key or static call
it is (read from its `struct tracepoint`, kernel/tracepoints.py), with the BPF programs
attached to it and the probes registered on it; any other static key by its own symbol, or
its address."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from patchguard.integrity.explain import KeyName, PlainKeys
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.kernel.tracepoints import (
    ITERATOR_PREFIX,
    TRAMPOLINE_PREFIX,
    Tracepoint,
    TracepointReader,
    layout,
)
from patchguard.x86.inputs import Symbols


class TracepointKeys:
    """A KeyNamer (integrity/explain.py) that knows tracepoints."""

    def __init__(
        self,
        reader: TracepointReader,
        symbols: Symbols,
        users: Mapping[str, list[str]],
        jump_keys: Callable[[], list[int]],
        name_of: Callable[[int], str] | None = None,
    ) -> None:
        self.reader, self.symbols, self.users = reader, symbols, users
        # names an address no symbol's extent holds: the memory of no listed module holding it
        self.name_of = name_of
        self.plain = PlainKeys(symbols)
        self._jump_keys = jump_keys
        self._by_name: dict[str, Tracepoint] = {}

    def jump_key(self, key: int) -> KeyName:
        tp = self.reader.at_key(key)
        return self._named(tp, "the key of ") if tp else self.plain.jump_key(key)

    def call_key(self, key: int) -> KeyName | None:
        tp = self.reader.by_call_key(key, self._jump_keys())
        return self._named(tp) if tp else None

    def trampoline(self, name: str) -> KeyName | None:
        if not name.startswith(TRAMPOLINE_PREFIX):
            return None
        tp_name = name.removeprefix(TRAMPOLINE_PREFIX)
        if tp_name not in self._by_name:  # each tracepoint of the jump tables, until found
            for key in self._jump_keys():
                if (tp := self.reader.at_key(key)) is not None:
                    self._by_name.setdefault(tp.name, tp)
                if tp_name in self._by_name:
                    break
        tp = self._by_name.get(tp_name)
        return self._named(tp) if tp else KeyName(f"tracepoint {tp_name}", self._owner(tp_name, ()))

    def _named(self, tp: Tracepoint, prefix: str = "") -> KeyName:
        self._by_name.setdefault(tp.name, tp)
        return KeyName(f"{prefix}tracepoint {tp.name}", self._owner(tp.name, tp.probes))

    def _owner(self, name: str, probes: tuple[int, ...]) -> str:
        """The BPF programs on it, then every probe function registered on it (the kernel's
        own perf and trace-event probes, BPF's glue, a module's probe with its module)."""
        parts = list(self.users.get(name, []))
        named = [self._probe(p) for p in probes]
        if named:
            parts.append("probes " + ", ".join(named))
        return f"tracepoint {name}: " + ("; ".join(parts) or "no probe registered")

    def _probe(self, address: int) -> str:
        loc = self.symbols.lookup(address)
        if loc is not None and not loc.offset:
            return loc.symbol.name + (f" [{loc.symbol.module}]" if loc.symbol.module else "")
        if self.name_of is not None:
            return self.name_of(address)
        return str(loc) if loc else hex(address)


def tracepoint_keys(
    kernel: Kernel, users: Mapping[str, list[str]], jump_keys: Callable[[], list[int]]
) -> TracepointKeys | None:
    """The namer for the live kernel, None where tracepoints cannot be read (no BTF for them,
    no memory reader): keys are then named by PlainKeys."""
    try:
        lay = layout(kernel.vmlinux_btf)
        memory = kernel.memory()
    except KernelAccessError:
        return None
    if lay is None:
        return None
    prefix = lay.check_prefix
    assert prefix in (TRAMPOLINE_PREFIX, ITERATOR_PREFIX)
    proofs = {s.address: s.name for s in kernel.kallsyms.with_prefix(prefix) if s.is_text}
    reader = TracepointReader(memory, lay, proofs)
    names = kernel.attributor()  # by bounds, as scan names the same probes (probes.py)
    return TracepointKeys(reader, names, users, jump_keys, names.name)
