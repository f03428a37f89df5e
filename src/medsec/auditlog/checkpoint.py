"""C2SP transparency-log checkpoints (https://c2sp.org/tlog-checkpoint).

The note text is the origin line, the tree size in decimal, the base64 root
hash, then optional extension lines. Parsing is strict: anything that a
different implementation could read differently is refused.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from medsec.auditlog.merkle import EMPTY_ROOT, HASH_SIZE
from medsec.auditlog.note import NoteSigner, NoteVerifier, open_note
from medsec.errors import CheckpointError

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")  # tlog-checkpoint: decimal, no leading zeroes
_MAX_SIZE = 2**64 - 1


def _check_line(line: str, what: str) -> None:
    if not line:
        raise CheckpointError(f"checkpoint {what} is empty")
    for ch in line:
        if ord(ch) < 0x20:
            raise CheckpointError(f"checkpoint {what} contains a control character")


@dataclass(frozen=True)
class Checkpoint:
    """A log's signed statement of its size and root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if not 0 <= self.size <= _MAX_SIZE:
            raise CheckpointError(f"checkpoint size {self.size} is out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash has {len(self.root_hash)} bytes, not {HASH_SIZE}")
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            raise CheckpointError("a checkpoint of size 0 must carry the empty-tree root (RFC 9162 2.1.1)")
        for ext in self.extensions:
            _check_line(ext, "extension line")

    def body(self) -> str:
        root = base64.b64encode(self.root_hash).decode("ascii")
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (without signatures)."""
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint text does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint has fewer than three lines")
        origin, size_text, root_text, *extensions = lines
        if not _SIZE.fullmatch(size_text):
            raise CheckpointError(f"checkpoint size {size_text[:40]!r} is not a decimal without leading zeroes")
        try:
            root_hash = base64.b64decode(root_text, validate=True)
        except ValueError as e:
            raise CheckpointError("checkpoint root hash is not base64") from e
        if base64.b64encode(root_hash).decode("ascii") != root_text:
            raise CheckpointError("checkpoint root hash is not canonical base64")
        cp = cls(origin, int(size_text), root_hash, tuple(extensions))
        if cp.body() != text:
            raise CheckpointError("checkpoint text is not in canonical form")
        return cp


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The checkpoint as a signed note. The key name should be the origin (tlog-checkpoint)."""
    return signer.sign(checkpoint.body())


def _verifier(key: str | NoteVerifier) -> NoteVerifier:
    return key if isinstance(key, NoteVerifier) else NoteVerifier.from_vkey(key)


def verify_checkpoint(note: str, log_vkey: str | NoteVerifier, *, origin: str | None = None) -> Checkpoint:
    """Verify the log's signature on a checkpoint note and return the checkpoint.

    The origin must equal ``origin`` or, by default, the log key's name, so a
    checkpoint of one log can never pass as another's. Other signatures
    (witness cosignatures) are ignored here.
    """
    verifier = _verifier(log_vkey)
    if verifier.sig_type != 0x01:
        raise CheckpointError("a log key must have signature type 0x01 (Ed25519)")
    text, _ = open_note(note, [verifier])
    cp = Checkpoint.parse(text)
    expected = origin if origin is not None else verifier.name
    if cp.origin != expected:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not the expected {expected!r}")
    return cp
