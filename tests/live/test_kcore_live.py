"""/proc/kcore on the running kernel. Which case applies depends on the machine: absent
(no CONFIG_PROC_KCORE, as on the 6.18 "fc" VM), refused (lockdown=confidentiality), or
readable (the Debian 6.1 lab). One test per case; the others are skipped naming this
machine's case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchguard.kernel.errors import KernelAccessError
from patchguard.kernel.kcore import KCORE_PATH, KcoreReader

pytestmark = pytest.mark.live


def machine_case() -> str:
    if not os.path.exists(KCORE_PATH):
        return "absent"
    try:
        lockdown = Path("/sys/kernel/security/lockdown").read_text()
    except OSError:
        lockdown = ""
    return "refused" if "[confidentiality]" in lockdown else "readable"


CASE = machine_case()


def only(case: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(case != CASE, reason=f"/proc/kcore is {CASE} here, not {case}")


@only("absent")
def test_absent_kcore_is_reported_with_reason() -> None:
    # The 6.18 "fc" VM: no /proc/kcore; the error names the file and says why.
    with pytest.raises(KernelAccessError) as info:
        KcoreReader.open()
    assert str(info.value) == "/proc/kcore: not present on this kernel (ENOENT)"


@only("refused")
def test_refused_kcore_is_reported_with_reason() -> None:
    # lockdown=confidentiality: the kernel refuses to open /proc/kcore.
    with pytest.raises(KernelAccessError, match=r"^/proc/kcore: .*\(EPERM\)$"):
        KcoreReader.open()


@only("readable")
def test_readable_kcore_reads_stext() -> None:
    # The Debian 6.1 lab guest: read the first bytes of kernel text.
    stext = 0
    for line in Path("/proc/kallsyms").read_text().splitlines():
        if line.endswith(" _stext"):
            stext = int(line.split()[0], 16)
            break
    if not stext:
        pytest.skip("kallsyms hides addresses (kptr_restrict) or has no _stext")
    with KcoreReader.open() as reader:
        assert len(reader.read(stext, 16)) == 16
