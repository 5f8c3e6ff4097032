"""The floor process: what any whole `scan` or `check` must at least do, as its own process.

Python starts, reads /proc/kallsyms (finding the core text's bounds in it), loads the eBPF
memory reader and reads and SHA-256s the core kernel text through it, then exits. bench/scan.py
and bench/check.py --process time it beside the commands in one run.
Run as root: .venv/bin/python bench/floor_process.py
"""

from __future__ import annotations

import hashlib
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
    reader = EbpfReader.open()
    try:
        digest = hashlib.sha256()
        for _, chunk in read_chunks(reader, start, end):
            digest.update(chunk)
    finally:
        reader.close()
    print(f"{end - start} bytes sha256 {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
