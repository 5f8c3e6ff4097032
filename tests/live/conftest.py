"""Fixtures of the live tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from patchguard.kernel import Kernel


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    """A handle on the running kernel, closed after the test (its reader and symbolizer
    programs go with it)."""
    k = Kernel()
    try:
        yield k
    finally:
        k.close()
