"""The ftrace ops list and direct calls read from the running kernel's memory, against the
ftrace sites: what one memory structure says, another must agree with. On these VMs an agent
outside our view attaches BPF trampolines bpf(2) does not list: each must still be a direct
call ftrace's own direct_functions records (a machine without any checks the same, emptily)."""

from __future__ import annotations

import pytest
from support.counted_reads import Counted

from patchguard.kernel import Kernel
from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.bpf.objects import PROG
from patchguard.kernel.ftrace_ops import direct_functions, layout, list_head, read_ops
from patchguard.surfaces.bpf_trampolines import HiddenTrampoline, direct_calls, identify
from patchguard.surfaces.ftrace_sites import check_sites
from patchguard.surfaces.reading import Reading
from patchguard.surfaces.tracing.ops import collect_ops
from patchguard.surfaces.tracing.records import DirectMismatch, OpsRecord

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_every_direct_call_is_what_its_site_calls(kernel: Kernel) -> None:
    r = Reading("tracing", kernel)
    collect_ops(r)
    assert not [g for g in r.gaps if "kernel memory" in g.what], r.gaps
    ops = [x for x in r.records if isinstance(x, OpsRecord)]
    assert all(o.handler and o.flags for o in ops)
    assert [x for x in r.records if isinstance(x, DirectMismatch)] == []


def test_each_direct_ops_holds_the_call_ftrace_records(kernel: Kernel) -> None:
    """6.6+: a direct ops' own direct_call, which call_direct_funcs follows on a shared site,
    is the target direct_functions records for each function the ops traces."""
    memory = kernel.memory()
    at = layout(kernel.vmlinux_btf)
    if at.direct_call is None:
        pytest.skip("this kernel's ftrace_ops has no direct_call (before 6.6)")
    direct = direct_functions(kernel, memory, at)
    ops = [o for o in read_ops(memory, list_head(kernel, memory)[0], at) if o.enabled]
    held = [o for o in ops if "DIRECT" in o.flag_names]
    if not held:
        pytest.skip("no direct ftrace ops on this kernel now")
    assert all(o.direct_call is None for o in ops if o not in held)
    for o in held:
        assert o.direct_call and {direct[ip] for ip in o.traced} == {o.direct_call}, o


def test_every_hidden_trampoline_is_a_direct_call_ftrace_records(kernel: Kernel) -> None:
    memory = kernel.memory()
    at = layout(kernel.vmlinux_btf)
    head, how = list_head(kernel, memory)
    ops = read_ops(memory, head, at)
    direct = direct_functions(kernel, memory, at)
    traced = {ip for o in ops if o.enabled for ip in o.traced}
    assert set(direct) <= traced, how  # every direct call belongs to an enabled ops
    found = check_sites(kernel, memory, b"", 0)
    hidden = {h.site: h.trampoline for h in found.hooks if h.trampoline is not None}
    for site, tramp in hidden.items():
        assert direct.get(site) == tramp.address, hex(site)
        assert all(p.memory is not None and p.memory.prog_id for p in tramp.programs)


def test_each_direct_call_is_named_by_what_it_reaches(kernel: Kernel) -> None:
    """Every direct call ftrace records is named by the code at its target, read from memory:
    a BPF trampoline with the programs it runs (bpf(2) listing each id, or said not to), and
    the hidden trampolines of the agent here are never taken for known ones."""
    memory = kernel.memory()
    direct = direct_functions(kernel, memory, layout(kernel.vmlinux_btf))
    if not any(direct.values()):
        pytest.skip("no direct ftrace call on this kernel now")
    calls = direct_calls(kernel, memory, direct)
    assert len(calls) == sum(1 for t in direct.values() if t)
    listed = set(bpf.next_ids(PROG.next_id_cmd, "PROG_GET_NEXT_ID"))
    hidden = {
        h.trampoline.address for h in check_sites(kernel, memory, b"", 0).hooks if h.trampoline
    }
    for call in calls:
        assert call.target in direct.values()
        assert all(p.listed == (p.prog_id in listed) for p in call.programs), call
        if call.known:
            assert call.trampoline and call.programs and set(call.prog_ids) <= listed, call
            assert call.target not in hidden, call
        if call.target in hidden:
            assert call.trampoline is not None and not call.known, call


def _programs(tramps: dict[int, HiddenTrampoline]) -> dict[int, tuple[int, ...]]:
    """Each trampoline's struct bpf_progs: what another look of the same agent finds again
    (the bpf_kallsyms list's counts move with other processes' programs)."""
    return {t: tuple(p.prog for p in h.programs) for t, h in tramps.items()}


def test_a_look_reads_each_trampoline_once(kernel: Kernel) -> None:
    """kernel_text's ftrace sites and tracing's direct calls reach the same trampolines: the
    second to ask in a look reads no memory and gets what the first found; a new look reads
    memory again."""
    memory = kernel.memory()
    targets = [t for t in direct_functions(kernel, memory, layout(kernel.vmlinux_btf)).values()]
    targets = sorted({t for t in targets if t})
    if len(targets) < 2:
        pytest.skip("fewer than two direct ftrace calls on this kernel now")
    half, first, second, again = (Counted(memory) for _ in range(4))
    some = identify(kernel, half, targets[: len(targets) // 2])
    found = identify(kernel, first, targets)
    assert first.reads > 0 and half.reads > 0
    assert {t: found[t] for t in some} == some  # the half already read is not read again
    assert identify(kernel, second, targets) == found and second.reads == 0
    kernel.end_look()
    fresh = identify(kernel, again, targets)
    assert again.reads > first.reads  # all of them read again, in one go
    assert _programs(fresh) == _programs(found)
