"""RFC 6962 vectors from transparency-dev/merkle (tests/data/merkle/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medsec.auditlog.merkle import (
    EMPTY_ROOT,
    MemoryNodes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from medsec.errors import ProofError

pytestmark = pytest.mark.req("RA-2")

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "data" / "merkle" / "rfc6962-vectors.json").read_text("utf-8")
)
LEAVES = [bytes.fromhex(h) for h in VECTORS["tree"]["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(h) for h in VECTORS["tree"]["root_hashes_hex_by_tree_size"]]
POLICY_CASES = {
    "testdata/inclusion/single-entry/empty-root-and-leaf.json",
    "testdata/consistency/additional/sizes-are-equal-zero-and-proof-is-empty.json",
}


def _hexes(values: list[str] | None) -> list[bytes]:
    return [bytes.fromhex(v) for v in values or []]


def test_hasher_vectors() -> None:
    ops = {v["op"]: v for v in VECTORS["hasher_vectors"] if v["op"] != "HashLeaf"}
    assert EMPTY_ROOT.hex() == ops["EmptyRoot"]["want_hex"]
    node = ops["HashChildren"]
    assert node_hash(node["left_utf8"].encode(), node["right_utf8"].encode()).hex() == node["want_hex"]
    for v in VECTORS["hasher_vectors"]:
        if v["op"] == "HashLeaf":
            assert leaf_hash(v["input_utf8"].encode()).hex() == v["want_hex"]


def test_roots_for_sizes_0_to_8() -> None:
    tree = MemoryNodes.from_entries(LEAVES)
    assert [root(tree, n) for n in range(9)] == ROOTS
    for level, hashes in enumerate(VECTORS["tree"]["node_hashes_hex_by_level"]):
        assert [tree.node(level, i).hex() for i in range(len(hashes))] == hashes


def test_generated_proofs_match_the_happy_paths() -> None:
    tree = MemoryNodes.from_entries(LEAVES)
    for probe in VECTORS["inclusion_probes"]:
        if not probe["wantErr"] and probe["treeSize"] <= 8 and probe["root_hex"] == ROOTS[probe["treeSize"]].hex():
            assert inclusion_proof(tree, probe["leafIdx"], probe["treeSize"]) == _hexes(probe.get("proof_hex"))
    for probe in VECTORS["consistency_probes"]:
        if not probe["wantErr"] and probe["size1"] > 0:
            assert consistency_proof(tree, probe["size1"], probe["size2"]) == _hexes(probe.get("proof_hex"))


@pytest.mark.parametrize("probe", VECTORS["inclusion_probes"], ids=lambda p: p["source_path"][18:])
def test_inclusion_probe(probe: dict[str, Any]) -> None:
    args = (
        bytes.fromhex(probe["leafHash_hex"]),
        probe["leafIdx"],
        probe["treeSize"],
        _hexes(probe.get("proof_hex")),
        bytes.fromhex(probe["root_hex"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("probe", VECTORS["consistency_probes"], ids=lambda p: p["source_path"][20:])
def test_consistency_probe(probe: dict[str, Any]) -> None:
    args = (
        probe["size1"],
        probe["size2"],
        _hexes(probe.get("proof_hex")),
        bytes.fromhex(probe["root1_hex"]),
        bytes.fromhex(probe["root2_hex"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_probe_counts_and_policy_cases_are_present() -> None:
    assert len(VECTORS["inclusion_probes"]) == 98
    assert len(VECTORS["consistency_probes"]) == 98
    paths = {p["source_path"]: p for p in VECTORS["inclusion_probes"] + VECTORS["consistency_probes"]}
    for path in POLICY_CASES:
        assert paths[path]["wantErr"] is True


def test_empty_root_and_leaf_are_rejected() -> None:
    with pytest.raises(ProofError, match="0 bytes"):
        verify_inclusion(b"", 0, 1, [], b"")


def test_consistency_between_two_empty_trees_is_rejected() -> None:
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
