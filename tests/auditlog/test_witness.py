"""Witness cosignatures (C2SP tlog-cosignature) and the attacks a witness must refuse."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from medsec.auditlog.checkpoint import Checkpoint, sign_checkpoint
from medsec.auditlog.merkle import EMPTY_ROOT, MemoryNodes, consistency_proof, root
from medsec.auditlog.note import NoteSigner, NoteVerifier, key_id, open_note, parse_note
from medsec.auditlog.witness import (
    FileWitnessState,
    MemoryWitnessState,
    TreeHead,
    Witness,
    WitnessState,
    verify_cosignature,
)
from medsec.crypto.keys import SigningKey
from medsec.errors import CheckpointError, WitnessError

pytestmark = pytest.mark.req("RA-2")

ORIGIN = "device.example/log"
NOW = 1_700_000_000


class Log:
    """A log simulator: a Merkle tree and a signing key."""

    def __init__(self, signer: NoteSigner, entries: list[bytes]) -> None:
        self.signer = signer
        self.tree = MemoryNodes.from_entries(entries)

    def note(self, size: int | None = None) -> str:
        n = self.tree.size if size is None else size
        return sign_checkpoint(Checkpoint(ORIGIN, n, root(self.tree, n)), self.signer)

    def proof(self, old: int, new: int) -> list[bytes]:
        return consistency_proof(self.tree, old, new)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, SigningKey.generate())


@pytest.fixture
def witness() -> Witness:
    return Witness("witness.example/w1", SigningKey.generate(), MemoryWitnessState())


def entries(n: int, tag: str = "") -> list[bytes]:
    return [f"{tag}entry {i}".encode() for i in range(n)]


def test_cosignature_verifies_and_carries_the_timestamp(signer: NoteSigner, witness: Witness) -> None:
    log = Log(signer, entries(10))
    cosigned = witness.cosign(log.note(), signer.vkey, [], NOW)
    assert verify_cosignature(cosigned, witness.vkey) == NOW
    assert open_note(cosigned, [signer.verifier, witness.verifier])[1] == [ORIGIN, witness.name]
    assert witness.state.latest(ORIGIN) == TreeHead(10, log.tree.root())


def test_witness_vkey_and_key_id_follow_the_spec(witness: Witness) -> None:
    name, kid, key = witness.vkey.split("+", 2)
    raw = base64.b64decode(key)
    assert name == witness.name and raw[0] == 0x04 and len(raw) == 33
    assert kid == key_id(witness.name, 0x04, raw[1:]).hex()
    assert NoteVerifier.from_vkey(witness.vkey) == witness.verifier


def test_cosigned_message_is_the_spec_format(signer: NoteSigner, witness: Witness) -> None:
    log = Log(signer, entries(3))
    note = log.note()
    cosigned = witness.cosign(note, signer.vkey, [], NOW)
    text, sigs = parse_note(cosigned)
    blob = sigs[-1].signature
    assert int.from_bytes(blob[:8], "big") == NOW
    message = f"cosignature/v1\ntime {NOW}\n{text}".encode()
    witness.verifier.public_key.verify(blob[8:], message)


def test_witness_advances_with_a_consistency_proof(signer: NoteSigner, witness: Witness) -> None:
    log = Log(signer, entries(1000))
    witness.cosign(log.note(100), signer.vkey, [], NOW)
    witness.cosign(log.note(777), signer.vkey, log.proof(100, 777), NOW + 1)
    witness.cosign(log.note(777), signer.vkey, [], NOW + 2)  # same head again is fine
    witness.cosign(log.note(1000), signer.vkey, log.proof(777, 1000), NOW + 3)
    assert witness.state.latest(ORIGIN) == TreeHead(1000, log.tree.root())


def test_rollback_is_refused_by_witness(signer: NoteSigner, witness: Witness) -> None:
    log = Log(signer, entries(20))
    witness.cosign(log.note(20), signer.vkey, [], NOW)
    with pytest.raises(WitnessError, match="rollback"):
        witness.cosign(log.note(15), signer.vkey, [], NOW + 1)
    assert witness.state.latest(ORIGIN) == TreeHead(20, log.tree.root())


def test_forked_log_is_refused_by_witness(signer: NoteSigner, witness: Witness) -> None:
    honest = Log(signer, entries(12))
    forked = Log(signer, entries(8) + entries(6, tag="rewritten "))  # same key, history rewritten after 8
    witness.cosign(honest.note(10), signer.vkey, [], NOW)
    with pytest.raises(WitnessError, match="fork"):
        witness.cosign(forked.note(14), signer.vkey, forked.proof(10, 14), NOW + 1)
    with pytest.raises(WitnessError, match="fork"):
        witness.cosign(forked.note(10), signer.vkey, [], NOW + 1)  # same size, other root
    witness.cosign(honest.note(12), signer.vkey, honest.proof(10, 12), NOW + 2)


def test_missing_or_bad_consistency_proof_is_refused(signer: NoteSigner, witness: Witness) -> None:
    log = Log(signer, entries(40))
    witness.cosign(log.note(10), signer.vkey, [], NOW)
    with pytest.raises(WitnessError, match="fork"):
        witness.cosign(log.note(40), signer.vkey, [], NOW)
    with pytest.raises(WitnessError, match="fork"):
        witness.cosign(log.note(40), signer.vkey, log.proof(11, 40), NOW)


def test_checkpoint_signed_by_the_wrong_key_is_refused_by_witness(signer: NoteSigner, witness: Witness) -> None:
    impostor = NoteSigner(ORIGIN, SigningKey.generate())
    note = Log(impostor, entries(5)).note()
    with pytest.raises(CheckpointError):
        witness.cosign(note, signer.vkey, [], NOW)
    assert witness.state.latest(ORIGIN) is None


def test_forged_cosignature_is_rejected(signer: NoteSigner, witness: Witness) -> None:
    cosigned = witness.cosign(Log(signer, entries(5)).note(), signer.vkey, [], NOW)
    _, sigs = parse_note(cosigned)
    blob = bytearray(sigs[-1].signature)
    blob[7] ^= 1  # change the timestamp the signature covers
    forged = cosigned.replace(
        base64.b64encode(sigs[-1].key_id + sigs[-1].signature).decode(),
        base64.b64encode(sigs[-1].key_id + bytes(blob)).decode(),
    )
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_cosignature(forged, witness.vkey)
    other = Witness("witness.example/w1", SigningKey.generate(), MemoryWitnessState())
    with pytest.raises(CheckpointError, match="no cosignature"):
        verify_cosignature(cosigned, other.vkey)
    with pytest.raises(CheckpointError, match="0x04"):
        verify_cosignature(cosigned, signer.vkey)


def test_cosignature_is_not_valid_for_another_checkpoint(signer: NoteSigner, witness: Witness) -> None:
    log = Log(signer, entries(6))
    cosigned = witness.cosign(log.note(5), signer.vkey, [], NOW)
    moved = log.note(6) + cosigned.splitlines(keepends=True)[-1]
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_cosignature(moved, witness.vkey)


def test_state_is_recorded_before_the_cosignature_is_returned(signer: NoteSigner) -> None:
    class FailingState(MemoryWitnessState):
        def update(self, origin: str, expected: TreeHead | None, new: TreeHead) -> None:
            raise WitnessError("disk full")

    witness = Witness("witness.example/w1", SigningKey.generate(), FailingState())
    with pytest.raises(WitnessError, match="disk full"):
        witness.cosign(Log(signer, entries(3)).note(), signer.vkey, [], NOW)


def test_concurrent_state_change_is_refused() -> None:
    state = MemoryWitnessState()
    state.update(ORIGIN, None, TreeHead(1, bytes(32)))
    with pytest.raises(WitnessError, match="concurrently"):
        state.update(ORIGIN, None, TreeHead(2, bytes(32)))


def test_file_state_survives_a_restart(tmp_path: Path, signer: NoteSigner) -> None:
    key = SigningKey.generate()
    path = tmp_path / "witness" / "state.json"
    log = Log(signer, entries(30))
    Witness("witness.example/w1", key, FileWitnessState(path)).cosign(log.note(30), signer.vkey, [], NOW)
    restarted = Witness("witness.example/w1", key, FileWitnessState(path))
    assert restarted.state.latest(ORIGIN) == TreeHead(30, log.tree.root())
    with pytest.raises(WitnessError, match="rollback"):
        restarted.cosign(log.note(29), signer.vkey, [], NOW)


def test_file_state_is_safe_under_concurrent_cosigning(tmp_path: Path, signer: NoteSigner) -> None:
    state: WitnessState = FileWitnessState(tmp_path / "state.json")
    witness = Witness("witness.example/w1", SigningKey.generate(), state)
    log = Log(signer, entries(1))
    errors: list[Exception] = []

    def run() -> None:
        try:
            witness.cosign(log.note(), signer.vkey, [], NOW)
        except WitnessError as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("concurrently" in str(e) for e in errors)
    assert state.latest(ORIGIN) == TreeHead(1, log.tree.root())


def test_damaged_file_state_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "logs": {"o": {"size": "x"}}}')
    with pytest.raises(WitnessError, match="damaged"):
        FileWitnessState(path).latest("o")


def test_empty_log_then_growth(signer: NoteSigner, witness: Witness) -> None:
    empty = sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), signer)
    witness.cosign(empty, signer.vkey, [], NOW)
    witness.cosign(Log(signer, entries(4)).note(), signer.vkey, [], NOW)
