"""C2SP tlog-checkpoint bodies and their signatures."""

from __future__ import annotations

import base64

import pytest

from medsec.auditlog.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from medsec.auditlog.merkle import EMPTY_ROOT
from medsec.auditlog.note import NoteSigner
from medsec.crypto.keys import SigningKey
from medsec.errors import CheckpointError

pytestmark = pytest.mark.req("RA-2")

ROOT = bytes(range(32))
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def test_spec_example_body_round_trips() -> None:
    cp = Checkpoint.parse(SPEC_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.body() == SPEC_BODY


def test_extension_lines_round_trip() -> None:
    cp = Checkpoint("o.example/log", 3, ROOT, ("ext one", "ext two"))
    assert Checkpoint.parse(cp.body()) == cp


@pytest.mark.parametrize(
    "text",
    [
        SPEC_BODY[:-1],
        "example.com/x\n20852163\n",
        "\n5\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n05\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n+5\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n-5\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n5 \n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n5\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
        "o\n5\n" + base64.b64encode(ROOT).decode().rstrip("=") + "\n",
        "o\n5\n" + base64.b64encode(ROOT).decode() + "\n\n",  # empty extension line
        "o\n0\n" + base64.b64encode(ROOT).decode() + "\n",  # size 0 with a non-empty root
        "o\n99999999999999999999999\n" + base64.b64encode(ROOT).decode() + "\n",
    ],
)
def test_malformed_checkpoints_are_rejected(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(text)


def test_empty_log_checkpoint() -> None:
    cp = Checkpoint("o.example/log", 0, EMPTY_ROOT)
    assert Checkpoint.parse(cp.body()) == cp


def test_signed_checkpoint_verifies() -> None:
    signer = NoteSigner("o.example/log", SigningKey.generate())
    cp = Checkpoint("o.example/log", 7, ROOT)
    assert verify_checkpoint(sign_checkpoint(cp, signer), signer.vkey) == cp


def test_checkpoint_signed_by_the_wrong_key_is_rejected() -> None:
    log = NoteSigner("o.example/log", SigningKey.generate())
    impostor = NoteSigner("o.example/log", SigningKey.generate())
    note = sign_checkpoint(Checkpoint("o.example/log", 7, ROOT), impostor)
    with pytest.raises(CheckpointError, match="not signed by any trusted key"):
        verify_checkpoint(note, log.vkey)


def test_checkpoint_of_another_log_is_rejected() -> None:
    signer = NoteSigner("o.example/log", SigningKey.generate())
    note = sign_checkpoint(Checkpoint("other.example/log", 7, ROOT), signer)
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(note, signer.vkey)


def test_tampered_checkpoint_size_is_rejected() -> None:
    signer = NoteSigner("o.example/log", SigningKey.generate())
    note = sign_checkpoint(Checkpoint("o.example/log", 7, ROOT), signer)
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_checkpoint(note.replace("\n7\n", "\n8\n", 1), signer.vkey)


def test_values_are_validated_on_construction() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint("", 1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("o", -1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("o\nx", 1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("o", 1, b"short")
