"""Recognise a BPF trampoline by its code: what arch/x86/net/bpf_jit_comp.c emits for fentry,
fexit and fmod_ret programs attached to a kernel function.

A trampoline calls `__bpf_tramp_enter(im)` and `__bpf_tramp_exit(im)` (with `movabs rdi, im`,
the `struct bpf_tramp_image`) when it calls the original function, and around each program
`__bpf_prog_enter*(prog, run_ctx)` (with `movabs rdi, prog`, the `struct bpf_prog`), a direct
call of the program's image (`prog->bpf_func`), then `__bpf_prog_exit*`. Those helpers are core
kernel functions kallsyms lists, so the shape is read from the code alone, even when nothing
names the trampoline or its programs: the `struct bpf_prog` pointers it holds are where memory
says which programs they are (kernel/bpf/hidden_programs.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from patchguard.x86.insn import _capstone

HELPER_PREFIXES = ("__bpf_prog_enter", "__bpf_prog_exit", "__bpf_tramp_enter", "__bpf_tramp_exit")
# Every helper the x86 JIT has called (kernel/bpf/trampoline.c, 5.5 to 6.18): names kallsyms
# or the kernel looks up one by one, cheaper than a search of kallsyms by prefix.
HELPER_NAMES = (
    "__bpf_tramp_enter",
    "__bpf_tramp_exit",
    *(
        f"__bpf_prog_{way}{kind}"
        for way in ("enter", "exit")
        for kind in ("", "_recur", "_sleepable", "_sleepable_recur", "_lsm_cgroup")
    ),
)
MAX_CODE = 4096  # a trampoline of many programs still fits a page (BPF_MAX_TRAMP_LINKS: 38)


@dataclass(frozen=True)
class TrampolineProgram:
    """One program a trampoline runs."""

    prog: int  # its struct bpf_prog, the first argument of __bpf_prog_enter*
    image: int | None  # the program's code the trampoline calls (prog->bpf_func)
    enter: str  # which __bpf_prog_enter* (recur, sleepable, lsm_cgroup...)
    after_original: bool  # run after the traced function returned: fexit


@dataclass(frozen=True)
class TrampolineShape:
    address: int
    image: int | None  # struct bpf_tramp_image, given to __bpf_tramp_enter (None: no call orig)
    calls_original: bool
    programs: tuple[TrampolineProgram, ...]


class _Walk:
    def __init__(self, helpers: Mapping[int, str]) -> None:
        self.helpers = helpers
        self.rdi: int | None = None  # the last `movabs rdi, imm`
        self.image: int | None = None
        self.original = False
        self.pending: tuple[int, str] | None = None  # entered program, its image call next
        self.programs: list[TrampolineProgram] = []

    def call(self, dest: int) -> None:
        helper = self.helpers.get(dest)
        if helper is None:
            self._direct(dest)
        elif helper.startswith("__bpf_prog_enter") and self.rdi is not None:
            self.pending = (self.rdi, helper)
        elif helper == "__bpf_tramp_enter":
            self.image = self.rdi
        self.rdi = None

    def _direct(self, dest: int) -> None:
        """A call to no helper: the entered program's image, else the original function."""
        if self.pending is None:
            self.original = self.original or self.image is not None
            return
        prog, enter = self.pending
        self.programs.append(TrampolineProgram(prog, dest, enter, self.original))
        self.pending = None


def helper_addresses(symbols: Mapping[str, int]) -> dict[int, str]:
    """address -> name of the trampoline helpers among `symbols` (name -> address)."""
    return {a: n for n, a in symbols.items() if n.startswith(HELPER_PREFIXES)}


def recognise(code: bytes, address: int, helpers: Mapping[int, str]) -> TrampolineShape | None:
    """The trampoline `code` (read at `address`) is, or None if it is not one: at least one
    program entered through __bpf_prog_enter* and its image called. Decoding stops at the
    first unconditional jmp or ret (a trampoline ends with one)."""
    walk = _Walk(helpers)
    for _, _, mnemonic, ops in _capstone().disasm_lite(code[:MAX_CODE], address):
        if mnemonic == "movabs" and ops.startswith("rdi, "):
            walk.rdi = _number(ops[5:])
        elif mnemonic == "call" and (dest := _number(ops)) is not None:
            walk.call(dest)
        elif mnemonic in ("ret", "jmp"):
            break
    if not walk.programs:
        return None
    return TrampolineShape(address, walk.image, walk.original, tuple(walk.programs))


def _number(text: str) -> int | None:
    try:
        return int(text, 0) & ((1 << 64) - 1)
    except ValueError:
        return None  # an indirect operand: [rip + ...], a register
