"""The one exception the server's layers raise for a request it will not act on."""

from __future__ import annotations


class Refused(Exception):
    """A request the server will not act on; str() is one line for the client and the log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
