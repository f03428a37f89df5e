"""Exports of log ranges, verified offline, and the tampering they must expose."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from medsec.auditlog.export import EXPORT_FORMAT, build_export, verify_export
from medsec.auditlog.note import NoteSigner
from medsec.auditlog.store import FileLog
from medsec.auditlog.witness import MemoryWitnessState, Witness
from medsec.crypto.keys import SigningKey
from medsec.errors import CheckpointError, ExportError, ProofError

pytestmark = pytest.mark.req("RA-2")

ORIGIN = "medsec-device/SN-9"


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, SigningKey.generate())


@pytest.fixture
def log(tmp_path: Path, signer: NoteSigner) -> Iterator[FileLog]:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        log.append_many([{"event": "session", "n": i} for i in range(50)])
        yield log


def roundtrip(doc: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(doc))
    return result


def test_export_verifies_offline(log: FileLog, signer: NoteSigner) -> None:
    doc = roundtrip(log.export(10, 20))
    assert doc["format"] == EXPORT_FORMAT
    summary = verify_export(doc, signer.vkey)
    assert summary.origin == ORIGIN
    assert summary.checkpoint.size == 50
    assert [i for i, _ in summary.entries] == list(range(10, 20))
    assert json.loads(summary.entries[0][1]) == {"event": "session", "n": 10}


def test_export_with_consistency_and_cosignature(log: FileLog, signer: NoteSigner) -> None:
    old = log.checkpoint()
    log.append_many([{"event": "later", "n": i} for i in range(7)])
    witness = Witness("witness.example/w", SigningKey.generate(), MemoryWitnessState())
    witness.cosign(old, signer.vkey, [], 1)
    cosigned = witness.cosign(log.checkpoint(), signer.vkey, log.consistency_proof(50, 57), 2)
    log.store_cosigned_checkpoint(cosigned)
    doc = roundtrip(log.export(0, 57, previous_checkpoint=old))
    summary = verify_export(doc, signer.vkey, [witness.vkey])
    assert summary.witnesses == ("witness.example/w",)
    assert summary.cosigned_at == (2,)
    assert summary.previous is not None and summary.previous.size == 50


def test_sparse_export_from_any_reader(signer: NoteSigner) -> None:
    bodies = [json.dumps({"org": i % 3, "n": i}, separators=(",", ":"), sort_keys=True).encode() for i in range(30)]
    tree = merkle.MemoryNodes.from_entries(bodies)
    note = sign_checkpoint(Checkpoint(ORIGIN, 30, tree.root()), signer)
    mine = [(i, b) for i, b in enumerate(bodies) if i % 3 == 1]
    doc = roundtrip(build_export(reader=tree, log_vkey=signer.vkey, checkpoint_note=note, entries=mine))
    assert [i for i, _ in verify_export(doc, signer.vkey).entries] == [i for i, _ in mine]


def test_non_canonical_leaf_data_travels_as_base64(signer: NoteSigner) -> None:
    bodies = [b"not json", b'{"b":1, "a":2}']
    tree = merkle.MemoryNodes.from_entries(bodies)
    note = sign_checkpoint(Checkpoint(ORIGIN, 2, tree.root()), signer)
    doc = build_export(reader=tree, log_vkey=signer.vkey, checkpoint_note=note, entries=enumerate(bodies))
    assert all("entry_b64" in e for e in doc["entries"])
    assert [b for _, b in verify_export(roundtrip(doc), signer.vkey).entries] == bodies


def test_export_with_a_modified_entry_is_detected(log: FileLog, signer: NoteSigner) -> None:
    doc = roundtrip(log.export(0, 10))
    doc["entries"][3]["entry"]["n"] = 99
    with pytest.raises(ProofError, match="entry 3"):
        verify_export(doc, signer.vkey)


def test_export_with_a_dropped_or_reordered_entry_is_detected(log: FileLog, signer: NoteSigner) -> None:
    doc = roundtrip(log.export(0, 10))
    moved = copy.deepcopy(doc)
    moved["entries"][4]["index"] = 5  # claim entry 4 is entry 5
    del moved["entries"][5]
    with pytest.raises(ProofError, match="entry 5"):
        verify_export(moved, signer.vkey)
    swapped = copy.deepcopy(doc)
    swapped["entries"][2], swapped["entries"][3] = swapped["entries"][3], swapped["entries"][2]
    with pytest.raises(ExportError, match="out of order"):
        verify_export(swapped, signer.vkey)


def test_export_with_a_tampered_proof_is_detected(log: FileLog, signer: NoteSigner) -> None:
    doc = roundtrip(log.export(0, 10))
    raw = bytearray(base64.b64decode(doc["entries"][7]["inclusion_proof"][1]))
    raw[0] ^= 0x80
    doc["entries"][7]["inclusion_proof"][1] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ProofError, match="entry 7"):
        verify_export(doc, signer.vkey)


def test_export_signed_by_the_wrong_key_is_rejected(log: FileLog, signer: NoteSigner) -> None:
    doc = roundtrip(log.export(0, 5))
    other = NoteSigner(ORIGIN, SigningKey.generate())
    doc["log_vkey"] = other.vkey
    doc["checkpoint"] = other.sign(verify_checkpoint(doc["checkpoint"], signer.vkey).body())
    with pytest.raises(CheckpointError):
        verify_export(doc, signer.vkey)


def test_export_without_the_required_cosignature_is_rejected(log: FileLog, signer: NoteSigner) -> None:
    witness = Witness("witness.example/w", SigningKey.generate(), MemoryWitnessState())
    with pytest.raises(CheckpointError, match="no cosignature"):
        verify_export(roundtrip(log.export(0, 5)), signer.vkey, [witness.vkey])


def test_export_with_a_forked_earlier_checkpoint_is_rejected(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path / "fork", ORIGIN, signer) as fork:
        fork.append_many([{"event": "other", "n": i} for i in range(20)])
        forked_note = fork.checkpoint()
    with FileLog(tmp_path / "real", ORIGIN, signer) as real:
        real.append_many([{"event": "session", "n": i} for i in range(30)])
        doc = roundtrip(real.export(0, 3, previous_checkpoint=forked_note))
    with pytest.raises(ProofError, match="consistency"):
        verify_export(doc, signer.vkey)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d.update(format="v0"), ExportError),
        (lambda d: d.update(origin="elsewhere"), ExportError),
        (lambda d: d.update(entries="nope"), ExportError),
        (lambda d: d["entries"][0].update(index=True), ExportError),
        (lambda d: d["entries"][0].update(entry_b64="AAAA"), ExportError),
        (lambda d: d["entries"][0].update(inclusion_proof=["!!"]), ExportError),
        (lambda d: d["entries"][0].update(index=10**6), ExportError),
        (lambda d: d["entries"][0]["entry"].update(f=1.5), ExportError),
        (lambda d: d.update(consistency=[]), ExportError),
    ],
)
def test_malformed_exports_are_rejected(log: FileLog, signer: NoteSigner, mutate: Any, error: type[Exception]) -> None:
    doc = roundtrip(log.export(0, 3))
    mutate(doc)
    with pytest.raises(error):
        verify_export(doc, signer.vkey)


def test_build_export_refuses_a_tree_that_does_not_match(log: FileLog, signer: NoteSigner) -> None:
    note = log.checkpoint()
    other = merkle.MemoryNodes.from_entries([b"x"] * 50)
    with pytest.raises(ExportError, match="does not match"):
        build_export(reader=other, log_vkey=signer.vkey, checkpoint_note=note, entries=[])
