"""The floor process: what any whole `scan` or `check` must at least do, as its own process.

Python starts, reads /proc/kallsyms (finding the core text's bounds in it), loads the eBPF
memory reader and reads and SHA-256s the core kernel text through it, then exits. bench/scan.py
and bench/check.py --process time it beside the commands in one run.
With spans (START:SIZE, hex) it reads and SHA-256s those instead of the core text: every byte a
baseline covers, for a floor of `check` where the baseline holds more than the core text (the
lab guest's Debian kernels: rodata and the modules' code, ~25 MB against 14.7 of core text).
Run as root: .venv/bin/python bench/floor_process.py [START:SIZE ...]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from patchguard.kernel.bpf.reader import EbpfReader
from patchguard.kernel.memory import read_chunks


def core_text(kallsyms: bytes) -> tuple[int, int]:
    """(_stext, _etext) from the raw table, without parsing the rest of it."""
    found: dict[bytes, int] = {}
    for name in (b"_stext", b"_etext"):
        at = kallsyms.index(b" " + name + b"\n")
        line_start = kallsyms.rindex(b"\n", 0, at) + 1
        found[name] = int(kallsyms[line_start : line_start + 16], 16)
    return found[b"_stext"], found[b"_etext"]


def main() -> None:
    start, end = core_text(Path("/proc/kallsyms").read_bytes())
    spans = [tuple(int(x, 16) for x in a.split(":")) for a in sys.argv[1:]]
    reader = EbpfReader.open()
    try:
        digest = hashlib.sha256()
        for at, size in spans or [(start, end - start)]:
            for _, chunk in read_chunks(reader, at, at + size):
                digest.update(chunk)
    finally:
        reader.close()
    total = sum(size for _, size in spans) if spans else end - start
    print(f"{total} bytes sha256 {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
