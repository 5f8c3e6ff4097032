"""The kernel text surface on the running kernel: the ftrace sites' bytes taken as the text
streams through SHA-256 are judged as those sliced from the whole text read at once."""

from __future__ import annotations

import hashlib

import pytest

from patchguard.kernel import Kernel
from patchguard.kernel.memory import read_chunks
from patchguard.surfaces.ftrace_sites import check_sites
from patchguard.surfaces.kernel_text import KernelTextSurface

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("live_kernel")]


def test_streamed_text_gives_the_digest_and_sites_of_the_whole_read(kernel: Kernel) -> None:
    memory, text = kernel.memory(), kernel.range("text")
    assert text is not None
    state = KernelTextSurface().collect(kernel)
    code = b"".join(chunk for _, chunk in read_chunks(memory, text.start, text.end))
    digest = hashlib.sha256(code).hexdigest()
    whole = check_sites(kernel, memory, code, text.start)
    image, sites = state.records.image, state.records.ftrace_sites
    assert image is not None and image.sha256 == digest
    assert sites is not None and sites.sites == whole.sites > 10000
    assert (sites.calls, sites.unlisted) == (whole.calls, whole.unlisted)
    assert [(h.site, h.code, h.target) for h in sites.hooks] == [
        (h.site, h.code, h.target) for h in whole.hooks
    ]
