"""The RFC 6962 / RFC 9162 Merkle tree over SHA-256: hashes, inclusion and consistency proofs.

Leaf hash `SHA-256(0x00 || data)`, interior hash `SHA-256(0x01 || left || right)`, empty tree
`SHA-256("")`; a tree of n leaves splits at the largest power of two below n (RFC 6962 2.1).
Proofs are generated from any `HashSource` (the hash of each complete, aligned subtree), so the
same code proves from an in-memory tree or from tiles fetched from a server. The verifiers are
RFC 9162 2.1.3.2 and 2.1.4.2, and raise ProofError saying why a proof fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from patchguard.policy.transparency import TransparencyError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_SIZE = (1 << 63) - 1  # tree sizes are uint64 on the wire; C2SP caps them at 2^63 - 1


class ProofError(TransparencyError):
    """A proof that does not verify, or a proof requested for sizes that do not exist."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class HashSource(Protocol):
    def complete(self, level: int, index: int) -> bytes:
        """The hash of the complete subtree of 2**level leaves that starts at index * 2**level."""
        ...


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(source: HashSource, lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for a range the RFC recursion reaches (lo aligned to the range's span)."""
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0:
        level = n.bit_length() - 1
        return source.complete(level, lo >> level)
    k = _split(n)
    level = k.bit_length() - 1
    return node_hash(source.complete(level, lo >> level), subtree_root(source, lo + k, hi))


def inclusion_proof(source: HashSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 6962 2.1.1."""
    if not 0 <= index < size:
        raise ProofError(f"no entry {index} in a tree of {size}")
    proof: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:  # walk down, collecting siblings; the proof lists them bottom up
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(subtree_root(source, lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_root(source, lo, lo + k))
            lo += k
    return proof[::-1]


def consistency_proof(source: HashSource, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 6962 2.1.2 (empty when old is 0 or equal to new)."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    if old in (0, new):
        return []
    proof: list[bytes] = []
    lo, hi, whole = 0, new, True
    while old != hi:
        k = _split(hi - lo)
        if old <= lo + k:
            proof.append(subtree_root(source, lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_root(source, lo, lo + k))
            lo, whole = lo + k, False
    if not whole:
        proof.append(subtree_root(source, lo, hi))
    return proof[::-1]


def _check_hashes(proof: Sequence[bytes], *hashes: bytes) -> None:
    if len(proof) > 64:
        raise ProofError(f"a proof of {len(proof)} hashes is longer than any tree needs")
    if any(len(h) != HASH_SIZE for h in (*proof, *hashes)):
        raise ProofError("a hash in the proof is not 32 bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: `leaf` (a leaf hash) is entry `index` of the tree `root` of `size`."""
    _check_hashes(proof, leaf, root)
    if not 0 <= index < size:
        raise ProofError(f"entry {index} cannot be in a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    if r != root:
        raise ProofError(f"entry {index} is not in the tree of {size} with that root")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: the tree `new_root` of size `new` extends the one of size `old`."""
    _check_hashes(proof, old_root, new_root)
    if not 0 <= old <= new:
        raise ProofError(f"a tree of {new} cannot extend one of {old}")
    if old in (0, new):
        if proof:
            raise ProofError(f"a proof from size {old} to {new} must be empty")
        if old == new and old_root != new_root:
            raise ProofError(f"two different roots for the same size {old}")
        if old == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is not SHA-256 of nothing")
        return
    path = list(proof)
    if old & (old - 1) == 0:  # old is a complete subtree: its root starts the path
        path.insert(0, old_root)
    if not path:
        raise ProofError("the consistency proof is empty")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != old_root or sr != new_root:
        raise ProofError(f"the tree of {new} does not extend the tree of {old}")


class MemoryTree:
    """Every complete subtree's hash, level by level: O(log n) per append, O(1) per lookup."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash; every subtree it completes gets its hash (a binary carry)."""
        self._levels[0].append(leaf)
        level = 0
        while len(self._levels[level]) % 2 == 0:
            left, right = self._levels[level][-2:]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(left, right))
            level += 1

    def complete(self, level: int, index: int) -> bytes:
        if level >= len(self._levels) or not 0 <= index < len(self._levels[level]):
            raise ProofError(f"no complete subtree {index} at level {level}")
        return self._levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ProofError(f"no tree of size {size} (the log has {self.size})")
        return subtree_root(self, 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self, index, self.size if size is None else size)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self.size if new is None else new
        if new > self.size:
            raise ProofError(f"no tree of size {new} (the log has {self.size})")
        return consistency_proof(self, old, new)
