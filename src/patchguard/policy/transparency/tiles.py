"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): the log as static files, and reading it back.

A tile at level L holds up to 256 consecutive hashes of complete subtrees of 256**L leaves;
`tile/<L>/<N>` is full (8,192 bytes), `tile/<L>/<N>.p/<W>` the partial right edge of width W.
`tile/entries/<N>[.p/<W>]` bundles the entries themselves, each prefixed by its big-endian
uint16 length. N is written in 3-digit groups, all but the last prefixed by `x`
(1234067 is `x001/x234/067`). `TileSource` proves from fetched tiles: any hash it needs is
computed from the one tile that holds its subtree, and every tile's length is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from patchguard.policy.transparency import TransparencyError, merkle

WIDTH = 256
HEIGHT = 8
TILE_BYTES = WIDTH * merkle.HASH_SIZE
MAX_ENTRY = 0xFFFF  # the uint16 length prefix
MAX_BUNDLE = WIDTH * (2 + MAX_ENTRY)

# fetch(path, limit): the bytes at `path` (relative to the log's prefix), at most `limit` long
Fetch = Callable[[str, int], bytes]


class TileError(TransparencyError):
    """A tile or entry bundle that is missing, the wrong length or malformed."""


def encode_index(n: int) -> str:
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.insert(0, f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(groups)


@dataclass(frozen=True)
class Tile:
    level: int  # -1: an entry bundle
    index: int
    width: int

    @property
    def path(self) -> str:
        where = "entries" if self.level < 0 else str(self.level)
        partial = f".p/{self.width}" if self.width < WIDTH else ""
        return f"tile/{where}/{encode_index(self.index)}{partial}"


def tile_width(level: int, index: int, size: int) -> int:
    """How many hashes (or entries, level -1) tile `index` at `level` holds in a tree of `size`."""
    return max(0, min(WIDTH, (size >> (HEIGHT * max(level, 0))) - index * WIDTH))


def tiles_for(size: int) -> Iterator[Tile]:
    """Every hash tile of a tree of `size`, level by level, partial ones last in a level."""
    level = 0
    while size >> (HEIGHT * level):
        count = size >> (HEIGHT * level)
        for index in range((count + WIDTH - 1) // WIDTH):
            yield Tile(level, index, tile_width(level, index, size))
        level += 1


def bundles_for(size: int) -> Iterator[Tile]:
    for index in range((size + WIDTH - 1) // WIDTH):
        yield Tile(-1, index, tile_width(-1, index, size))


def tile_data(source: merkle.HashSource, tile: Tile) -> bytes:
    first = tile.index * WIDTH
    return b"".join(source.complete(HEIGHT * tile.level, first + i) for i in range(tile.width))


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    for entry in entries:
        if len(entry) > MAX_ENTRY:
            raise TileError(f"an entry of {len(entry)} bytes does not fit an entry bundle")
    return b"".join(len(e).to_bytes(2, "big") + e for e in entries)


def decode_bundle(data: bytes, width: int, path: str) -> list[bytes]:
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise TileError(f"{path}: truncated entry length")
        length = int.from_bytes(data[at : at + 2], "big")
        if at + 2 + length > len(data):
            raise TileError(f"{path}: entry {len(entries)} is cut short")
        entries.append(data[at + 2 : at + 2 + length])
        at += 2 + length
    if len(entries) != width:
        raise TileError(f"{path}: holds {len(entries)} entries, not {width}")
    return entries


def _reduce(hashes: Sequence[bytes]) -> bytes:
    """The root of a complete subtree from its 2**h bottom hashes."""
    layer = list(hashes)
    while len(layer) > 1:
        layer = [merkle.node_hash(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    return layer[0]


class TileSource:
    """The hashes of a tree of `size`, read from tiles through `fetch` (each tile once)."""

    def __init__(self, fetch: Fetch, size: int) -> None:
        self._fetch, self.size = fetch, size
        self._tiles: dict[tuple[int, int], list[bytes]] = {}

    def tile(self, level: int, index: int) -> list[bytes]:
        cached = self._tiles.get((level, index))
        if cached is not None:
            return cached
        width = tile_width(level, index, self.size)
        if width == 0:
            raise TileError(f"no tile {index} at level {level} in a tree of {self.size}")
        path = Tile(level, index, width).path
        data = self._fetch(path, width * merkle.HASH_SIZE)
        if len(data) != width * merkle.HASH_SIZE:
            raise TileError(f"{path}: {len(data)} bytes, not {width * merkle.HASH_SIZE}")
        hashes = [data[i : i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE)]
        self._tiles[(level, index)] = hashes
        return hashes

    def complete(self, level: int, index: int) -> bytes:
        tile_level, height = divmod(level, HEIGHT)
        first = index << height
        hashes = self.tile(tile_level, first // WIDTH)
        offset = first % WIDTH
        span = hashes[offset : offset + (1 << height)]
        if len(span) != 1 << height:
            raise TileError(f"subtree {index} at level {level} is not in the tree")
        return _reduce(span)

    def entries(self, index: int) -> list[bytes]:
        width = tile_width(-1, index, self.size)
        if width == 0:
            raise TileError(f"no entry bundle {index} in a tree of {self.size}")
        path = Tile(-1, index, width).path
        return decode_bundle(self._fetch(path, width * (2 + MAX_ENTRY)), width, path)
