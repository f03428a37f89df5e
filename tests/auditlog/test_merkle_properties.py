"""Property tests: generated proofs verify, and any flipped byte makes them fail."""

from __future__ import annotations

import hashlib
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsec.auditlog.merkle import (
    MemoryNodes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_root,
    root,
    verify_consistency,
    verify_inclusion,
)
from medsec.errors import ProofError

pytestmark = pytest.mark.req("RA-2")

MAX_SIZE = 3000


@cache
def big_tree() -> MemoryNodes:
    return MemoryNodes.from_entries([f"entry {i}".encode() for i in range(MAX_SIZE)])


def reference_mth(leaves: list[bytes]) -> bytes:
    """MTH straight from the RFC 9162 2.1.1 definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_mth(leaves[:k]), reference_mth(leaves[k:]))


def flip(value: bytes, position: int, bit: int) -> bytes:
    i = position % len(value)
    return value[:i] + bytes([value[i] ^ (1 << bit)]) + value[i + 1 :]


def test_roots_match_the_rfc_definition() -> None:
    leaves = [f"entry {i}".encode() for i in range(70)]
    for n in range(71):
        assert root(big_tree(), n) == reference_mth(leaves[:n])


def test_unaligned_ranges_are_still_correct() -> None:
    leaves = [f"entry {i}".encode() for i in range(40)]
    for start in range(0, 20, 3):
        for end in range(start, 40, 5):
            assert range_root(big_tree(), start, end) == reference_mth(leaves[start:end])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_inclusion_proof_verifies(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_SIZE))
    index = data.draw(st.integers(0, size - 1))
    tree = big_tree()
    verify_inclusion(tree.node(0, index), index, size, inclusion_proof(tree, index, size), root(tree, size))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_consistency_proof_verifies(data: st.DataObject) -> None:
    new_size = data.draw(st.integers(1, MAX_SIZE))
    old_size = data.draw(st.integers(1, new_size))
    tree = big_tree()
    proof = consistency_proof(tree, old_size, new_size)
    verify_consistency(old_size, new_size, proof, root(tree, old_size), root(tree, new_size))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), position=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_flipped_byte_in_inclusion_proof_or_root_is_detected(data: st.DataObject, position: int, bit: int) -> None:
    size = data.draw(st.integers(2, MAX_SIZE))
    index = data.draw(st.integers(0, size - 1))
    tree = big_tree()
    proof = inclusion_proof(tree, index, size)
    root_hash = root(tree, size)
    leaf = tree.node(0, index)
    target = data.draw(st.integers(0, len(proof) + 1))
    if target < len(proof):
        proof[target] = flip(proof[target], position, bit)
    elif target == len(proof):
        root_hash = flip(root_hash, position, bit)
    else:
        leaf = flip(leaf, position, bit)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, root_hash)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), position=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_flipped_byte_in_consistency_proof_or_root_is_detected(data: st.DataObject, position: int, bit: int) -> None:
    new_size = data.draw(st.integers(2, MAX_SIZE))
    old_size = data.draw(st.integers(1, new_size - 1))
    tree = big_tree()
    proof = consistency_proof(tree, old_size, new_size)
    roots = [root(tree, old_size), root(tree, new_size)]
    target = data.draw(st.integers(0, len(proof) + 1))
    if target < len(proof):
        proof[target] = flip(proof[target], position, bit)
    else:
        roots[target - len(proof)] = flip(roots[target - len(proof)], position, bit)
    with pytest.raises(ProofError):
        verify_consistency(old_size, new_size, proof, roots[0], roots[1])


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_proofs_for_the_wrong_index_or_size_fail(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, MAX_SIZE))
    index = data.draw(st.integers(0, size - 1))
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
    tree = big_tree()
    proof = inclusion_proof(tree, index, size)
    with pytest.raises(ProofError):
        verify_inclusion(tree.node(0, index), other, size, proof, root(tree, size))
    with pytest.raises(ProofError):
        verify_inclusion(tree.node(0, other), index, size, proof, root(tree, size))


def test_nodes_for_append_builds_the_same_tree_as_the_definition() -> None:
    tree = MemoryNodes()
    leaves = []
    for i in range(33):
        leaves.append(f"x{i}".encode())
        tree.append(leaves[-1])
        assert tree.root() == reference_mth(leaves)


def test_bad_proof_requests_raise() -> None:
    tree = big_tree()
    with pytest.raises(ProofError):
        inclusion_proof(tree, 5, 5)
    with pytest.raises(ProofError):
        consistency_proof(tree, 6, 5)
    with pytest.raises(ProofError):
        tree.node(0, MAX_SIZE)
    assert consistency_proof(tree, 0, 5) == []
    assert consistency_proof(tree, 5, 5) == []
