"""Socket addresses as the views hold them, spelled for people only when shown.

/proc/net prints "0100007F:1F90": each 32-bit word of the address as a host-order number, and
the port. sock_diag sends the address bytes in network order and the port apart. Views are
compared by inode (and spelled only for sockets that have none), so the many sockets never
shown are never spelled; each spelling is worked out once per address (lru_cache: sockets
share few local addresses).
"""

from __future__ import annotations

import functools
import socket
import struct
import sys


def joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=1 << 14)
def host_from_hex(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if sys.byteorder == "little":
        # Each 32-bit word was printed as a host-order number: back to memory (network) order.
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def endpoint(field: str) -> tuple[str, int]:
    """ "0100007F:1F90" -> ("127.0.0.1", 8080); the IPv6 form has 32 hex digits."""
    hex_addr, _, hex_port = field.partition(":")
    if len(hex_addr) not in (8, 32) or len(hex_port) != 4:
        raise ValueError(f"not an address:port: {field[:60]!r}")
    try:
        return host_from_hex(hex_addr), int(hex_port, 16)
    except ValueError:
        raise ValueError(f"not an address:port: {field[:60]!r}") from None


@functools.lru_cache(maxsize=1 << 14)
def host_from_bytes(ipv6: bool, raw: bytes) -> str:
    if ipv6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return socket.inet_ntop(socket.AF_INET, raw[:4])


_V4, _V6 = struct.Struct("=I"), struct.Struct("=4I")


def proc_form(protocol: str, addr: str | bytes, port: int | None) -> str:
    """An address as /proc/net prints it, "0100007F:1F90", whichever view read it: each word
    read in host order, as the kernel's %08X does; how sockets without an inode are told
    apart across views without spelling every one."""
    if isinstance(addr, str):
        return addr
    if protocol.endswith("6"):
        a, b, c, d = _V6.unpack_from(addr)
        return f"{a:08X}{b:08X}{c:08X}{d:08X}:{port or 0:04X}"
    return f"{_V4.unpack_from(addr)[0]:08X}:{port or 0:04X}"


def spelled(protocol: str, addr: str | bytes, port: int | None) -> str:
    """An address as people read it: "127.0.0.1:80", "[::1]:53", a unix name, "*:port"."""
    if protocol == "unix":
        return str(addr)
    if isinstance(addr, bytes):
        return joined(host_from_bytes(protocol.endswith("6"), addr), port or 0)
    if not addr:
        return f"*:{port}"
    if ":" in addr and not addr.startswith("["):
        host, hex_port = endpoint(addr)
        return joined(host, hex_port)
    return addr  # spelled already


__all__ = ["endpoint", "host_from_bytes", "host_from_hex", "joined", "proc_form", "spelled"]
