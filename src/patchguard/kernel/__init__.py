"""Kernel access: the only code that touches the kernel. Everything takes a root path so tests
can feed captured trees; the live kernel is root "/"."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from patchguard.kernel.errors import KernelAccessError, oserror_reason

if TYPE_CHECKING:
    from patchguard.kernel.attribution import Attributor
    from patchguard.kernel.bpf.symbolize import KernelName, Symbolizer
    from patchguard.kernel.btf import Btf
    from patchguard.kernel.child_read import ChildRead
    from patchguard.kernel.kallsyms import AddressRange, SymbolTable
    from patchguard.kernel.memory import KernelMemory

_T = TypeVar("_T")


class Kernel:
    """A handle on one kernel: the live one (root "/") or a captured tree of its files."""

    def __init__(self, root: Path | str = "/") -> None:
        self.root = Path(root)
        # eBPF objects patchguard itself loaded (the memory reader): not findings about the host.
        self.own_prog_ids: set[int] = set()
        self.own_map_ids: set[int] = set()
        self._memory: KernelMemory | None = None
        self._memory_error: KernelAccessError | None = None
        self._module_btf: dict[str, Btf] = {}
        self._kallsyms: SymbolTable | None = None
        self._kallsyms_read: ChildRead | None = None  # started by start_kallsyms()
        self._refused: set[object] = set()  # the kernel_lookup functions the kernel refused
        self._symbolizer: Symbolizer | None = None
        self._symbolizer_failed = False
        self._ranges: dict[str, AddressRange | None] = {}  # the same for the whole boot
        # BPF helper call offset -> helper name: core text, the same for the whole boot, so
        # refresh() keeps it (the guard's trigger looks then need no kallsyms read).
        self.helper_names: dict[int, str] = {}
        self._attributor: Attributor | None = None
        # What one look decoded from memory, by its holder's class (per_look); end_look()
        # drops it, so the next look reads memory afresh.
        self._look: dict[type, object] = {}
        # Surfaces are collected in parallel: what they share is loaded once, under this lock.
        self._lock = threading.RLock()
        self._boot_id: str | None = None

    @property
    def live(self) -> bool:
        return self.root == Path("/")

    def path(self, kernel_path: str) -> Path:
        """Where an absolute kernel path such as /proc/kallsyms lies under this root."""
        return self.root / kernel_path.lstrip("/")

    def read_text(self, kernel_path: str) -> str:
        """Read a pseudo file; OSError is turned into a one-line KernelAccessError."""
        try:
            return self.path(kernel_path).read_text(errors="replace")
        except OSError as exc:
            raise KernelAccessError(kernel_path, oserror_reason(exc)) from exc

    def boot_id(self) -> str:
        """/proc/sys/kernel/random/boot_id: which boot a scan or baseline belongs to. Read
        once: a boot's id cannot change while this process runs in it (the guard's sweeps
        would otherwise open the file every sweep)."""
        if self._boot_id is None:
            self._boot_id = self.read_text("/proc/sys/kernel/random/boot_id").strip()
        return self._boot_id

    def attributor(self) -> Attributor:
        """Names addresses by bounds (attribution.py): what scan and check both say of an
        address, built once per kallsyms read."""
        from patchguard.kernel.attribution import load

        with self._lock:
            if self._attributor is None:
                self._attributor = load(self)
            return self._attributor

    @property
    def kallsyms(self) -> SymbolTable:
        """The symbol table, read once; surfaces running in parallel share that one read."""
        from patchguard.kernel.kallsyms import SymbolTable

        with self._lock:
            if self._kallsyms is None:
                self._kallsyms = SymbolTable.parse(self._read_kallsyms())
            return self._kallsyms

    def start_kallsyms(self) -> None:
        """Start reading /proc/kallsyms now, in a child (child_read: the surfaces run Python
        beside the read), for whoever asks for `kallsyms` later; live only."""
        from patchguard.kernel.child_read import ChildRead

        with self._lock:
            if self.live and self._kallsyms is None and self._kallsyms_read is None:
                self._kallsyms_read = ChildRead(self.path("/proc/kallsyms"))

    def _read_kallsyms(self) -> str:
        self.start_kallsyms()
        read, self._kallsyms_read = self._kallsyms_read, None
        path = self.path("/proc/kallsyms")
        try:
            raw = read.result() if read is not None else path.read_bytes()
        except OSError as exc:
            raise KernelAccessError("/proc/kallsyms", oserror_reason(exc)) from exc
        return raw.decode(errors="replace")

    def range(self, name: str) -> AddressRange | None:
        """A protected range by its short name (kallsyms.RANGE_SYMBOLS). Live, its bounds are
        asked of the kernel (kernel_lookup), so that nobody waits for /proc/kallsyms to be
        read for them; kallsyms answers where the kernel cannot."""
        if name not in self._ranges:
            self._ranges[name] = self._range(name)
        return self._ranges[name]

    def _range(self, name: str) -> AddressRange | None:
        from patchguard.kernel.bpf.lookup import symbol_address
        from patchguard.kernel.kallsyms import RANGE_SYMBOLS, AddressRange

        start_sym, end_syms = RANGE_SYMBOLS[name]
        try:
            start = self._ask_kernel(symbol_address, start_sym)
            ends = (self._ask_kernel(symbol_address, sym) for sym in end_syms)
            end = next(filter(None, ends), None)
        except KernelAccessError:
            return self.kallsyms.range(name)
        if start is None or end is None:
            # The kernel's own lookup has no such symbol: /proc/kallsyms prints that same
            # table (a kernel without CONFIG_KALLSYMS_ALL has no rodata markers), so a search
            # of its 5 MB for them (~2.5 ms a name) could only find nothing.
            return None
        if start < end:
            return AddressRange(name, start, end)
        return self.kallsyms.range(name)

    def symbol_address(self, name: str) -> int | None:
        """The address of `name` as the kernel looks it up (core before modules): asked of
        the kernel live (kernel_lookup), else from kallsyms."""
        from patchguard.kernel.bpf.lookup import symbol_address

        try:
            return self._ask_kernel(symbol_address, name)
        except KernelAccessError:
            return self.kallsyms.address_of(name)

    def _ask_kernel(self, lookup: Callable[..., _T], *args: object) -> _T:
        """lookup(*args) answered by the live kernel itself (kernel_lookup); KernelAccessError
        where it cannot: a captured tree, or a lookup it refused once (not asked again)."""
        if not self.live or lookup in self._refused:
            raise KernelAccessError("kernel lookup", "this kernel does not answer it")
        try:
            return lookup(*args, own=self.own_prog_ids.add)
        except KernelAccessError:
            self._refused.add(lookup)
            raise

    def names(self, addresses: Iterable[int]) -> dict[int, KernelName]:
        """Each address named symbol+offset [module], for those a symbol covers: by the kernel
        (%pS, symbolize.py) where it names addresses, else by kallsyms."""
        from patchguard.kernel.bpf.symbolize import KernelName

        symbolizer = self.symbolizer()
        if symbolizer is not None:
            return symbolizer.names(addresses)
        syms = self.kallsyms
        located = {a: syms.lookup(a) for a in set(addresses)}
        return {a: KernelName.of(loc) for a, loc in located.items() if loc is not None}

    def symbolizer(self) -> Symbolizer | None:
        """The kernel's own naming of addresses (symbolize.py), opened once; None where the
        kernel cannot (then kallsyms names them) or the kernel is a captured tree."""
        from patchguard.kernel.bpf.symbolize import Symbolizer

        with self._lock:
            if self._symbolizer is None and self.live and not self._symbolizer_failed:
                try:
                    self._symbolizer = Symbolizer.open(own=self.own_prog_ids.add)
                except KernelAccessError:
                    self._symbolizer_failed = True
                else:
                    self.own_map_ids.update(self._symbolizer.map_ids)
            return self._symbolizer

    @cached_property
    def vmlinux_btf(self) -> Btf:
        from patchguard.kernel.bpf.lookup import find_by_name_kind
        from patchguard.kernel.btf import Btf

        # Live, the kernel finds types by name for us (its BTF is parsed already); the file
        # is walked only as far as lookups by id need.
        finder = functools.partial(self._ask_kernel, find_by_name_kind) if self.live else None
        return Btf.load(self.path("/sys/kernel/btf/vmlinux"), finder=finder)

    @cached_property
    def _btf_names(self) -> dict[int, str]:
        from patchguard.kernel.bpf.objects import all_btf

        return {obj.btf_id: obj.name for obj in all_btf()}

    def btf_func_name(self, btf_obj_id: int, type_id: int) -> str | None:
        """Name of FUNC `type_id` in kernel BTF object `btf_obj_id` (vmlinux or a module)."""
        from patchguard.kernel.btf import Btf

        name = self._btf_names.get(btf_obj_id, "vmlinux") if btf_obj_id else "vmlinux"
        if name == "vmlinux":
            return self.vmlinux_btf.func_name(type_id)
        if name not in self._module_btf:
            path = self.path(f"/sys/kernel/btf/{name}")
            self._module_btf[name] = Btf.load(path, base=self.vmlinux_btf)
        module_btf = self._module_btf[name]
        func = module_btf.func_name(type_id)
        # A split BTF resolves vmlinux ids too: only its own ids are the module's functions.
        return f"{func} [{name}]" if func and type_id >= module_btf.start_id else func

    def per_look(self, kind: type[_T]) -> _T:
        """The one `kind()` of this look, made at its first use: what two surfaces of a scan
        would otherwise each read and decode from memory (the BPF trampolines that both
        kernel_text's ftrace sites and tracing's direct calls reach)."""
        with self._lock:
            held = self._look.get(kind)
            if not isinstance(held, kind):
                held = self._look[kind] = kind()
            return held

    def end_look(self) -> None:
        """Drop what this look decoded from memory: a handle kept for another look (the
        guard's next sweep, a bench's next round) reads memory afresh."""
        with self._lock:
            self._look.clear()

    def refresh(self) -> None:
        """Forget what changes while the kernel runs: kallsyms (modules, BPF programs and
        trampolines come and go with their symbols) and the BTF objects of modules. A handle
        kept across sweeps (the guard) calls this before each one, or a trampoline created
        since would be code no symbol names. vmlinux BTF and the memory reader stay."""
        self.end_look()
        with self._lock:
            self._kallsyms = None
            self._attributor = None
            if self._kallsyms_read is not None:  # a read started before: it may be stale
                self._kallsyms_read.close()
                self._kallsyms_read = None
            self._module_btf.clear()
            self.__dict__.pop("_btf_names", None)

    @property
    def memory_reader(self) -> str | None:
        """Which reader the scan used ("ebpf", "kcore"), None if none was opened."""
        return self._memory.name if self._memory is not None else None

    def memory(self) -> KernelMemory:
        """The kernel-memory reader that works here: eBPF first, then /proc/kcore."""
        with self._lock:
            return self._open_memory()

    def _open_memory(self) -> KernelMemory:
        if self._memory is not None:
            return self._memory
        if self._memory_error is not None:
            raise self._memory_error
        from patchguard.kernel.readers import open_reader

        try:
            self._memory = open_reader(self)
        except KernelAccessError as exc:
            self._memory_error = exc
            raise
        return self._memory

    def close(self) -> None:
        self.end_look()
        if self._symbolizer is not None:
            self._symbolizer.close()
            self._symbolizer = None
        if self._kallsyms_read is not None:
            self._kallsyms_read.close()
            self._kallsyms_read = None
        if self._memory is not None:
            self._memory.close()
            self._memory = None


__all__ = ["Kernel", "KernelAccessError"]
