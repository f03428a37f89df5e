"""Ed25519 signing and verification keys, and their files.

Private keys are stored as PKCS#8 PEM, encrypted when a passphrase is given,
written atomically with mode 0600. Public keys travel as base64 of the 32 raw
bytes. Verification raises :class:`~medsec.errors.SignatureError`; it never
returns a bool.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medsec.atomic_file import atomic_write
from medsec.errors import KeyFileError, SignatureError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PUBLIC_KEY_SIZE:
            raise SignatureError(f"an Ed25519 public key has {PUBLIC_KEY_SIZE} bytes, not {len(self.raw)}")

    @classmethod
    def from_base64(cls, text: str) -> VerifyKey:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SignatureError("public key is not valid base64") from e
        return cls(raw)

    def to_base64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise SignatureError unless ``signature`` is this key's signature over ``message``."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError(f"an Ed25519 signature has {SIGNATURE_SIZE} bytes, not {len(signature)}")
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature as e:
            raise SignatureError("signature does not verify with the expected key") from e


class SigningKey:
    """An Ed25519 private key. Keep it out of logs and reprs."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"SigningKey(public={self.verify_key.to_base64()})"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def verify_key(self) -> VerifyKey:
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return VerifyKey(raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"cannot load private key: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError("private key is not an Ed25519 key")
        return cls(key)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the key to ``path`` atomically with mode 0600."""
        write_private_file(path, self.to_pem(passphrase))

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> SigningKey:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e
        return cls.from_pem(data, passphrase)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load an unencrypted key from ``path``, creating it first if it does not exist."""
        if not path.exists():
            cls.generate().save(path)
        return cls.load(path)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600."""
    atomic_write(path, data, mode=0o600)
