"""C2SP signed notes, cross-checked with the golang.org/x/mod/sumdb/note example key and note."""

from __future__ import annotations

import base64

import pytest

from medsec.auditlog.note import (
    SIG_TYPE_ED25519,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_note,
    parse_note,
)
from medsec.crypto.keys import SigningKey
from medsec.errors import CheckpointError

pytestmark = pytest.mark.req("RA-2")

# golang.org/x/mod/sumdb/note note_test.go: the PeterNeumann key pair and its signed note.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
GO_NOTE = GO_TEXT + "\n" + GO_SIG


def go_signer() -> NoteSigner:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert raw[0] == SIG_TYPE_ED25519
    return NoteSigner("PeterNeumann", SigningKey.from_seed(raw[1:]))


def test_key_id_and_vkey_match_the_go_reference() -> None:
    signer = go_signer()
    assert signer.vkey == GO_VKEY
    assert signer.key_id.hex() == "c74f20a3"
    assert key_id("PeterNeumann", 1, signer.verifier.public_key.raw) == bytes.fromhex("c74f20a3")


def test_signature_is_byte_exact_with_the_go_reference() -> None:
    assert go_signer().sign(GO_TEXT) == GO_NOTE


def test_go_note_opens() -> None:
    text, names = open_note(GO_NOTE, [NoteVerifier.from_vkey(GO_VKEY)])
    assert text == GO_TEXT
    assert names == ["PeterNeumann"]


def test_tampered_note_text_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), [NoteVerifier.from_vkey(GO_VKEY)])


def test_tampered_note_signature_is_rejected() -> None:
    blob = bytearray(base64.b64decode(GO_SIG.rsplit(maxsplit=1)[-1]))
    blob[10] ^= 1
    forged = GO_TEXT + "\n— PeterNeumann " + base64.b64encode(bytes(blob)).decode() + "\n"
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(forged, [NoteVerifier.from_vkey(GO_VKEY)])


def test_note_signed_only_by_unknown_keys_is_rejected() -> None:
    other = NoteSigner("PeterNeumann", SigningKey.generate())  # same name, different key ID
    with pytest.raises(CheckpointError, match="not signed by any trusted key"):
        open_note(GO_NOTE, [other.verifier])


def test_unknown_signatures_are_ignored() -> None:
    extra = NoteSigner("someone.example/else", SigningKey.generate())
    note = extra.sign(GO_NOTE)
    assert note.endswith(GO_SIG + "— someone.example/else " + note.rsplit(" ", 1)[1])
    assert open_note(note, [NoteVerifier.from_vkey(GO_VKEY)]) == (GO_TEXT, ["PeterNeumann"])
    assert open_note(note, [NoteVerifier.from_vkey(GO_VKEY), extra.verifier])[1] == [
        "PeterNeumann",
        "someone.example/else",
    ]


def test_signing_twice_keeps_one_signature_per_key() -> None:
    signer = go_signer()
    assert signer.sign(signer.sign(GO_TEXT)) == GO_NOTE


def test_plain_text_with_blank_lines_can_be_signed() -> None:
    signer = NoteSigner("a.example/k", SigningKey.generate())
    text = "para one\n\npara two\n"
    assert open_note(signer.sign(text), [signer.verifier])[0] == text


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT + GO_SIG,  # no blank line
        GO_TEXT + "\n",  # no signatures
        GO_NOTE[:-1],  # no final newline
        GO_TEXT + "\n" + GO_SIG.replace("—", "-"),
        GO_TEXT + "\n" + GO_SIG.replace("Peter", "Pe ter"),
        GO_TEXT + "\n" + GO_SIG.replace("x08g", "x0!g"),
        GO_TEXT + "\n— PeterNeumann AAAA\n",  # signature shorter than a key ID
        GO_TEXT.replace("then", "th\ten") + "\n" + GO_SIG,  # control character
        GO_TEXT + "\n" + GO_SIG * 101,  # too many signatures
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(CheckpointError):
        open_note(note, [NoteVerifier.from_vkey(GO_VKEY)])


def test_duplicate_signature_from_a_known_key_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="two signatures"):
        open_note(GO_NOTE + GO_SIG, [NoteVerifier.from_vkey(GO_VKEY)])


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key ID
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case hex
        "PeterNeumann+c74f20a3+AxpcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # truncated key
        "PeterNeumann+c74f20a3+BRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown type
        "PeterNeumann+c74f20a3",
        "Peter+Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "",
    ],
)
def test_malformed_vkeys_are_rejected(vkey: str) -> None:
    with pytest.raises(CheckpointError):
        NoteVerifier.from_vkey(vkey)


def test_every_single_byte_change_of_the_go_vkey_is_rejected() -> None:
    for i in range(len(GO_VKEY)):
        changed = GO_VKEY[:i] + chr(ord(GO_VKEY[i]) + 1) + GO_VKEY[i + 1 :]
        with pytest.raises(CheckpointError):
            NoteVerifier.from_vkey(changed)


def test_parse_note_splits_at_the_last_blank_line() -> None:
    note = go_signer().sign("a\n\nb\n")
    text, sigs = parse_note(note)
    assert text == "a\n\nb\n"
    assert [s.name for s in sigs] == ["PeterNeumann"]
