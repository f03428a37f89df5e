"""Keys, signatures and canonical encodings shared by every medsec subsystem."""

from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey, VerifyKey

__all__ = ["SigningKey", "VerifyKey", "canonical_json"]
