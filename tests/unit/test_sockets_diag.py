"""The sock_diag requests a scan sends are stored as pyroute2 encodes them (diag_requests.py,
written by diag.store_requests), so that a scan does not import pyroute2's socket module for
seven constant messages: the stored bytes must be what pyroute2 encodes today."""

from __future__ import annotations

import pytest

from patchguard.surfaces.sockets import diag
from patchguard.surfaces.sockets.diag_requests import REQUESTS

REGENERATE = (
    ".venv/bin/python -c 'from patchguard.surfaces.sockets.diag import store_requests; "
    "store_requests()'"
)


@pytest.mark.parametrize("protocol", diag.DUMPED)
def test_the_stored_request_is_what_pyroute2_encodes(protocol: str) -> None:
    assert diag.request(protocol) == diag.encoded_request(protocol), f"run {REGENERATE}"


def test_every_dumped_protocol_has_a_stored_request() -> None:
    assert set(REQUESTS) == set(diag.DUMPED)
