"""sd_notify(3) over $NOTIFY_SOCKET, without libsystemd: READY, STOPPING, WATCHDOG pings."""

from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    """Send one notification; False when not run by systemd (no $NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)
    return True


class Watchdog:
    """Pings at half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last = 0.0

    def ping(self) -> None:
        if self.interval is not None and time.monotonic() - self._last >= self.interval:
            notify("WATCHDOG=1")
            self._last = time.monotonic()
