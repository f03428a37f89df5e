"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A note is a text ending in a newline, a blank line, then signature lines
``— <key name> base64(key ID || signature)``. A verifier key ("vkey") is
``<name>+<hex key ID>+base64(<signature type> || <public key>)``.

Two signature types are understood: 0x01, plain Ed25519 over the note text, and
0x04, the timestamped Ed25519 witness cosignature of c2sp.org/tlog-cosignature.
Signatures from unknown keys are ignored; a signature from a known key that
does not verify rejects the whole note (signed-note "Signatures").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from medsec.crypto.keys import SIGNATURE_SIZE, SigningKey, VerifyKey
from medsec.errors import CheckpointError, SignatureError

SIG_TYPE_ED25519 = 0x01
SIG_TYPE_COSIGNATURE_V1 = 0x04
KEY_ID_SIZE = 4
TIMESTAMP_SIZE = 8
MAX_SIGNATURES = 100  # the spec requires at least 16; golang.org/x/mod/sumdb/note allows 100
MAX_NOTE_BYTES = 1 << 20

_SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020
_MAX_TIMESTAMP = 2**63 - 1  # tlog-cosignature "timestamp MUST NOT exceed 2^63 - 1"
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def check_key_name(name: str) -> None:
    """Raise CheckpointError unless ``name`` is a valid key name (non-empty, no spaces or '+')."""
    if not name:
        raise CheckpointError("key name is empty")
    for ch in name:
        if ch.isspace() or ch == "+" or ord(ch) < 0x20:
            raise CheckpointError(f"key name {name!r} contains a space, control character or '+'")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4] (signed-note "Signatures")."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[:KEY_ID_SIZE]


def vkey_string(name: str, sig_type: int, public_key: bytes) -> str:
    kid = key_id(name, sig_type, public_key).hex()
    return f"{name}+{kid}+{base64.b64encode(bytes([sig_type]) + public_key).decode('ascii')}"


def cosignature_message(text: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs (tlog-cosignature "Ed25519 signed message")."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def _b64decode(text: str, what: str) -> bytes:
    if not _B64.fullmatch(text):
        raise CheckpointError(f"{what} is not standard base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise CheckpointError(f"{what} is not valid base64") from e


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: the key name, the 4-byte key ID and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{_SIG_PREFIX}{self.name} {blob}\n"


def parse_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, without verifying anything."""
    if len(note.encode("utf-8", errors="surrogatepass")) > MAX_NOTE_BYTES:
        raise CheckpointError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    for ch in note:
        if ord(ch) < 0x20 and ch != "\n":
            raise CheckpointError("note contains a control character other than newline")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise CheckpointError("note is not valid UTF-8")
    if not note.endswith("\n"):
        raise CheckpointError("note does not end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("note has no blank line before its signatures")
    text = note[: split + 1]
    sig_lines = note[split + 2 :].split("\n")[:-1]
    if not sig_lines:
        raise CheckpointError("note has no signatures")
    if len(sig_lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has {len(sig_lines)} signatures, more than {MAX_SIGNATURES}")
    signatures = []
    for line in sig_lines:
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError(f"malformed signature line {line[:80]!r}")
        name, sep, blob = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep:
            raise CheckpointError(f"malformed signature line {line[:80]!r}")
        check_key_name(name)
        raw = _b64decode(blob, f"signature of {name}")
        if len(raw) <= KEY_ID_SIZE:
            raise CheckpointError(f"signature of {name} is too short")
        signatures.append(NoteSignature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:]))
    return text, signatures


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    for ch in text:
        if ord(ch) < 0x20 and ch != "\n":
            raise CheckpointError("note text contains a control character other than newline")


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted key: name, signature type and Ed25519 public key."""

    name: str
    sig_type: int
    public_key: VerifyKey

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in (SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1):
            raise CheckpointError(f"unsupported signature type 0x{self.sig_type:02x}")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.public_key.raw)

    @property
    def vkey(self) -> str:
        return vkey_string(self.name, self.sig_type, self.public_key.raw)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``name+hex8+base64(type||key)`` and check that the key ID matches."""
        parts = vkey.split("+", 2)  # the base64 key may itself contain "+"
        if len(parts) != 3:
            raise CheckpointError("verifier key must be name+keyid+key")
        name, kid_hex, key_b64 = parts
        check_key_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", kid_hex):
            raise CheckpointError("verifier key ID must be 8 lowercase hex digits")
        raw = _b64decode(key_b64, "verifier key")
        if len(raw) != 1 + 32:
            raise CheckpointError("verifier key must be a type byte and a 32-byte Ed25519 key")
        try:
            verifier = cls(name, raw[0], VerifyKey(raw[1:]))
        except SignatureError as e:
            raise CheckpointError(f"bad verifier key: {e}") from e
        if verifier.key_id.hex() != kid_hex:
            raise CheckpointError(f"verifier key ID {kid_hex} does not match the key")
        return verifier

    def verify(self, text: str, signature: bytes) -> None:
        """Raise CheckpointError unless ``signature`` (without the key ID) signs ``text``."""
        message = text.encode("utf-8")
        if self.sig_type == SIG_TYPE_COSIGNATURE_V1:
            ts = cosignature_timestamp(signature)
            signature = signature[TIMESTAMP_SIZE:]
            message = cosignature_message(text, ts)
        elif len(signature) != SIGNATURE_SIZE:
            raise CheckpointError(f"signature of {self.name} has {len(signature)} bytes, not {SIGNATURE_SIZE}")
        try:
            self.public_key.verify(signature, message)
        except SignatureError as e:
            raise CheckpointError(f"signature of {self.name} does not verify") from e


def cosignature_timestamp(signature: bytes) -> int:
    """The timestamp of a timestamped_signature (tlog-cosignature "Format")."""
    if len(signature) != TIMESTAMP_SIZE + SIGNATURE_SIZE:
        raise CheckpointError(f"a cosignature has {TIMESTAMP_SIZE + SIGNATURE_SIZE} bytes, not {len(signature)}")
    ts = int.from_bytes(signature[:TIMESTAMP_SIZE], "big")
    if ts > _MAX_TIMESTAMP:
        raise CheckpointError("cosignature timestamp exceeds 2^63 - 1")
    return ts


class NoteSigner:
    """Signs notes with an Ed25519 key (signature type 0x01)."""

    def __init__(self, name: str, key: SigningKey) -> None:
        check_key_name(name)
        self.name = name
        self._key = key
        self.verifier = NoteVerifier(name, SIG_TYPE_ED25519, key.verify_key)

    def __repr__(self) -> str:
        return f"NoteSigner({self.vkey!r})"

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def sign(self, text: str) -> str:
        """Sign a text, or add this key's signature to an already-signed note.

        A signature already present from this key is replaced, so signing twice
        gives one line per key.
        """
        body = text
        signatures: list[NoteSignature] = []
        if "\n\n" in text:
            try:
                body, signatures = parse_note(text)
            except CheckpointError:
                body, signatures = text, []  # a plain text that has blank lines of its own
        _check_text(body)
        sig = NoteSignature(self.name, self.key_id, self._key.sign(body.encode("utf-8")))
        return assemble_note(body, [s for s in signatures if (s.name, s.key_id) != (sig.name, sig.key_id)] + [sig])


def assemble_note(text: str, signatures: Iterable[NoteSignature]) -> str:
    return text + "\n" + "".join(s.line() for s in signatures)


def open_note(note: str, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[str]]:
    """Verify ``note`` against trusted ``verifiers``; return its text and the names that signed it.

    Raises CheckpointError if the note is malformed, if a known key's signature
    does not verify, or if no known key signed it.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        if (v.name, v.key_id) in known:
            raise CheckpointError(f"two trusted keys share the name {v.name} and key ID {v.key_id.hex()}")
        known[(v.name, v.key_id)] = v
    text, signatures = parse_note(note)
    verified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue  # signed-note: "Verifiers MUST ignore signatures from unknown keys"
        if (sig.name, sig.key_id) in seen:
            raise CheckpointError(f"note carries two signatures from {sig.name}")
        seen.add((sig.name, sig.key_id))
        verifier.verify(text, sig.signature)
        verified.append(sig.name)
    if not verified:
        raise CheckpointError("note is not signed by any trusted key")
    return text, verified
