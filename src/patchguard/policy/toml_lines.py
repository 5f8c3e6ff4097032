"""Where in a TOML text a key is: tomllib returns values without positions, and an error that
says only "bpf_program[1].helpers" leaves the reader counting tables by hand."""

from __future__ import annotations

import re
import tomllib

_AT_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)")
_AT_END = re.compile(r"\s*\(at end of document\)")
_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*[.=]")
_INDEXED = re.compile(r"([A-Za-z0-9_\-]+)\[(\d+)\]\Z")


def decode_error_position(exc: tomllib.TOMLDecodeError, text: str) -> tuple[int, str]:
    """(line, message without the position) of a syntax error. Python 3.11's TOMLDecodeError
    has no lineno attribute (3.14 adds one); its message ends "(at line N, column M)"."""
    message = str(exc)
    found = _AT_LINE.search(message)
    line = int(found[1]) if found else max(1, len(text.splitlines()))
    return line, _AT_END.sub("", _AT_LINE.sub("", message)).strip()


def _code_lines(text: str) -> list[tuple[int, str]]:
    """Numbered lines, less those inside multi-line strings (where nothing is a key)."""
    lines, in_string = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if not in_string:
            lines.append((number, line))
        if (line.count('"""') + line.count("'''")) % 2:
            in_string = not in_string
    return lines


def line_of(text: str, key: str) -> int | None:
    """The line that defines `key` ("vendor", "bpf_program[1].helpers"), found by scanning the
    text, since tomllib keeps no positions; else the line of its [[table]], else None."""
    first, *rest = key.split(".")
    indexed = _INDEXED.match(first)
    table, index = (indexed[1], int(indexed[2])) if indexed else (None, 0)
    count, section, header = -1, None, None  # [[table]]s seen, current header, wanted header
    for number, line in _code_lines(text):
        head = _HEADER.match(line)
        if head:
            section = head[2]
            if table is None and (section == first or section.startswith(first + ".")):
                return number
            if section == table and head[1] == "[[":
                count += 1
                if header is not None:
                    break  # the next [[table]]: the key is not in the wanted one
                header = number if count == index else None
            elif header is not None and rest and section == f"{table}.{rest[0]}":
                return number  # [bpf_program.loader] written as a sub-table
            continue
        found = _KEY.match(line)
        if found and table is None and section is None and found[1] == first:
            return number
        if found and header is not None and section == table and rest and found[1] == rest[0]:
            return number
    return header
