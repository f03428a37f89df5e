"""Canonical JSON for signing and hashing.

The encoding is the RFC 8785 (JCS) form restricted to values whose encoding is
unambiguous without a float formatter: objects with string keys, arrays,
strings, integers, booleans and null. Keys are sorted by their UTF-16 code
units (RFC 8785 3.2.3), there is no insignificant whitespace and strings are
UTF-8 with only the escapes JSON requires. Floats are refused rather than
risk two implementations disagreeing on their digits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from medsec.errors import CanonicalEncodingError

# JavaScript's safe integer range; larger integers do not survive a JSON
# round trip in many languages, so they are refused (RFC 8785 3.2.2.3 / I-JSON).
_MAX_SAFE_INT = 2**53 - 1


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be")


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise CanonicalEncodingError(f"{path}: integer {value} is outside the I-JSON safe range")
        return
    if isinstance(value, float):
        raise CanonicalEncodingError(f"{path}: floats have no canonical form here; use an integer or a string")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalEncodingError(f"{path}: object key {k!r} is not a string")
            _check(v, f"{path}.{k}")
        return
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    raise CanonicalEncodingError(f"{path}: {type(value).__name__} cannot be encoded as JSON")


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value, key=_utf16_key)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically as UTF-8 bytes, or raise CanonicalEncodingError."""
    _check(value, "$")
    text = json.dumps(_sorted(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")
