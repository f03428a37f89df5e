"""RFC 6962 / RFC 9162 Merkle tree hashing and proofs, with no I/O.

A tree is read through a :class:`NodeReader` that returns the hash of a *perfect*
subtree: ``node(level, index)`` covers the ``2**level`` leaves starting at leaf
``index * 2**level``. Every range a proof needs is an aligned split of the tree
(RFC 9162 2.1.1), so it decomposes into O(log n) perfect subtrees, which any
store (files, SQL rows, memory) can keep append-only.

Verification follows RFC 9162 2.1.3.2 and 2.1.4.2 and raises
:class:`~medsec.errors.ProofError`; it never returns a bool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from medsec.errors import ProofError

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"  # RFC 9162 2.1.1 domain separation
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 2.1.1)."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class NodeReader(Protocol):
    """Read access to the perfect subtrees of one append-only tree."""

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree of ``2**level`` leaves starting at leaf ``index * 2**level``."""
        ...


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1), RFC 9162 2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def range_root(reader: NodeReader, start: int, end: int) -> bytes:
    """MTH(D[start:end]) built from perfect subtrees.

    Ranges that RFC 9162 proofs use are aligned, so this reads O(log n) nodes;
    an unaligned range is still computed correctly, only with more reads.
    """
    if not 0 <= start <= end:
        raise ProofError(f"invalid leaf range [{start}, {end})")
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return reader.node(level, start >> level)
    k = _split(n)
    return node_hash(range_root(reader, start, start + k), range_root(reader, start + k, end))


def root(reader: NodeReader, size: int) -> bytes:
    """MTH of the first ``size`` leaves."""
    return range_root(reader, 0, size)


def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 2.1.3.1, leaf side first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(range_root(reader, lo + k, hi))
            hi = lo + k
        else:
            path.append(range_root(reader, lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_proof(reader: NodeReader, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 2.1.4.1.

    The proof is empty when ``old_size`` is 0 or equal to ``new_size``: every tree
    is consistent with the empty tree and with itself.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi = 0, new_size
    whole_old_tree = True  # the "b" flag of SUBPROOF
    while old_size != hi:
        k = _split(hi - lo)
        if old_size <= lo + k:
            proof.append(range_root(reader, lo + k, hi))
            hi = lo + k
        else:
            proof.append(range_root(reader, lo, lo + k))
            lo += k
            whole_old_tree = False
    if not whole_old_tree:
        proof.append(range_root(reader, lo, hi))
    proof.reverse()
    return proof


def nodes_for_append(reader: NodeReader, size: int, new_leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
    """The perfect-subtree nodes ``(level, index, hash)`` that appending leaf ``size`` completes.

    The leaf itself comes first, then one node per level it closes, in the order a
    post-order layout stores them. Reads only the left siblings (O(log n)).
    """
    _check_hash(new_leaf_hash, "leaf hash")
    nodes = [(0, size, new_leaf_hash)]
    level, index, h = 0, size, new_leaf_hash
    while index & 1:
        h = node_hash(reader.node(level, index - 1), h)
        level += 1
        index >>= 1
        nodes.append((level, index, h))
    return nodes


def _check_hash(value: bytes, what: str) -> None:
    # transparency-dev rejects empty (0-byte) hashes; any other length is malformed too.
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} has {len(value)} bytes, not {HASH_SIZE}")


def _check_path(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        _check_hash(p, f"proof element {i}")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Raise ProofError unless ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree ``root_hash`` of ``size``."""
    _check_hash(leaf, "leaf hash")
    _check_hash(root_hash, "root hash")
    _check_path(proof)
    if not 0 <= index < size:  # RFC 9162 2.1.3.2 step 1
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof has {len(proof)} elements, more than a tree of size {size} needs")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof has {len(proof)} elements, fewer than a tree of size {size} needs")
    if r != root_hash:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root of the tree of size {size}")


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> None:
    """Raise ProofError unless ``proof`` shows the tree ``old_root`` is a prefix of the tree ``new_root``."""
    if not old_root or not new_root:
        raise ProofError("a root hash is empty")  # transparency-dev policy
    _check_path(proof)
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"new size {new_size} is smaller than old size {old_size}")
    if old_size == 0:
        # RFC 9162 2.1.4 defines proofs for 0 < m only; transparency-dev refuses size 0 too.
        raise ProofError("a consistency proof from the empty tree proves nothing; check the new tree directly")
    if old_size == new_size:
        if proof:
            raise ProofError(f"sizes are equal ({old_size}) but the consistency proof is not empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    if not proof:  # RFC 9162 2.1.4.2 step 1
        raise ProofError(f"empty consistency proof from size {old_size} to {new_size}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from {old_size} to {new_size} has too many elements")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from {old_size} to {new_size} has too few elements")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root of size {new_size}")


class MemoryNodes:
    """An in-memory tree: every perfect-subtree hash, level by level."""

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    @classmethod
    def from_leaf_hashes(cls, hashes: Sequence[bytes]) -> MemoryNodes:
        tree = cls()
        for h in hashes:
            tree.append_hash(h)
        return tree

    @classmethod
    def from_entries(cls, entries: Sequence[bytes]) -> MemoryNodes:
        return cls.from_leaf_hashes([leaf_hash(e) for e in entries])

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def node(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or level >= len(self._levels) or index >= len(self._levels[level]):
            raise ProofError(f"no node at level {level}, index {index} in a tree of size {self.size}")
        return self._levels[level][index]

    def append_hash(self, new_leaf_hash: bytes) -> int:
        """Append a leaf by its hash; return its index."""
        index = self.size
        for level, _, h in nodes_for_append(self, index, new_leaf_hash):
            if level == len(self._levels):
                self._levels.append([])
            self._levels[level].append(h)
        return index

    def append(self, data: bytes) -> int:
        return self.append_hash(leaf_hash(data))

    def root(self) -> bytes:
        return root(self, self.size)
