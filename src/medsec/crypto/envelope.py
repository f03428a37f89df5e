"""Signed documents in the DSSE envelope (in-toto's Dead Simple Signing Envelope, v1).

An envelope is JSON::

    {"payloadType": "application/vnd.medsec.trustdb+json",
     "payload": "<base64 of the document bytes>",
     "signatures": [{"keyid": "<hex SHA-256 of the raw public key>", "sig": "<base64>"}]}

Each signature covers the pre-authentication encoding (PAE) of the type and the
payload bytes, so a signature over one kind of document can never be replayed as
another kind. Documents are canonical JSON (:func:`medsec.crypto.canonical_json`).

:func:`open_envelope` checks everything before it returns anything: the type, the
key id and signature of ``threshold`` distinct trusted keys, and that the payload
is a JSON object. It raises :class:`~medsec.errors.SignatureError` (a bad or
missing signature) or :class:`EnvelopeError` (a malformed envelope), never a bool.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CryptoError, SignatureError

MAX_ENVELOPE_BYTES = 64 * 1024 * 1024


class EnvelopeError(CryptoError):
    """The envelope is not a well-formed DSSE envelope, or its payload is not a JSON object."""


def key_id(key: VerifyKey) -> str:
    """The key id used in envelopes: hex SHA-256 of the 32 raw public-key bytes."""
    return hashlib.sha256(key.raw).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of ``payload_type`` and ``payload``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def seal(document: Mapping[str, Any], payload_type: str, keys: Iterable[SigningKey]) -> bytes:
    """Sign ``document`` (canonical JSON) with each key and return the envelope bytes."""
    payload = canonical_json(dict(document))
    message = pae(payload_type, payload)
    signatures = [
        {"keyid": key_id(k.verify_key), "sig": base64.b64encode(k.sign(message)).decode("ascii")} for k in keys
    ]
    if not signatures:
        raise CryptoError("an envelope needs at least one signing key")
    envelope = {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": signatures,
    }
    return canonical_json(envelope)


def _field(envelope: Mapping[str, Any], name: str, kind: type) -> Any:
    value = envelope.get(name)
    if not isinstance(value, kind):
        raise EnvelopeError(f"envelope field {name!r} is missing or not a {kind.__name__}")
    return value


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise EnvelopeError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise EnvelopeError(f"{what} is not valid base64") from e


def open_envelope(
    data: bytes,
    payload_type: str,
    trusted: Iterable[VerifyKey],
    *,
    threshold: int = 1,
) -> dict[str, Any]:
    """Verify an envelope and return its document.

    ``threshold`` distinct keys from ``trusted`` must have signed; signatures by
    other keys are ignored. The payload type must equal ``payload_type``.
    """
    if threshold < 1:
        raise CryptoError("threshold must be at least 1")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnvelopeError(f"envelope is not JSON: {e}") from e
    if not isinstance(envelope, dict):
        raise EnvelopeError("envelope is not a JSON object")
    got_type = _field(envelope, "payloadType", str)
    if got_type != payload_type:
        raise SignatureError(f"envelope holds {got_type!r}, expected {payload_type!r}")
    payload = _b64(_field(envelope, "payload", str), "envelope payload")
    signatures = _field(envelope, "signatures", list)
    by_id = {key_id(k): k for k in trusted}
    message = pae(payload_type, payload)
    good: set[str] = set()
    for i, entry in enumerate(signatures):
        if not isinstance(entry, dict):
            raise EnvelopeError(f"signatures[{i}] is not an object")
        kid = entry.get("keyid")
        if not isinstance(kid, str) or kid in good or kid not in by_id:
            continue
        by_id[kid].verify(_b64(entry.get("sig"), f"signatures[{i}].sig"), message)
        good.add(kid)
    if len(good) < threshold:
        raise SignatureError(f"envelope has {len(good)} valid signature(s) from trusted keys, {threshold} required")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnvelopeError(f"envelope payload is not JSON: {e}") from e
    if not isinstance(document, dict):
        raise EnvelopeError("envelope payload is not a JSON object")
    return document


def peek(data: bytes) -> tuple[str, dict[str, Any]]:
    """The payload type and document of an envelope, UNVERIFIED (for display and lint only)."""
    try:
        envelope = json.loads(data)
        payload_type = envelope["payloadType"]
        document = json.loads(base64.b64decode(envelope["payload"], validate=True))
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise EnvelopeError(f"not a DSSE envelope: {e}") from e
    if not isinstance(payload_type, str) or not isinstance(document, dict):
        raise EnvelopeError("not a DSSE envelope of a JSON object")
    return payload_type, document
