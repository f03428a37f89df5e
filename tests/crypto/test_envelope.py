"""DSSE envelopes: what verifies, and the specific refusal for each tampering."""

from __future__ import annotations

import base64
import json

import pytest

from medsec.crypto.envelope import EnvelopeError, open_envelope, pae, peek, seal
from medsec.crypto.keys import SigningKey
from medsec.errors import SignatureError

TYPE = "application/vnd.medsec.test+json"


def test_pae_matches_the_dsse_spec_example() -> None:
    # The DSSE v1 specification's worked example.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_round_trip_and_peek() -> None:
    key = SigningKey.generate()
    data = seal({"b": 1, "a": "x"}, TYPE, [key])
    assert open_envelope(data, TYPE, [key.verify_key]) == {"a": "x", "b": 1}
    assert peek(data) == (TYPE, {"a": "x", "b": 1})


def test_tampered_payload_is_refused() -> None:
    key = SigningKey.generate()
    env = json.loads(seal({"entries": 1}, TYPE, [key]))
    env["payload"] = base64.b64encode(b'{"entries":2}').decode()
    with pytest.raises(SignatureError, match="does not verify"):
        open_envelope(json.dumps(env).encode(), TYPE, [key.verify_key])


def test_other_type_is_refused_even_with_a_good_signature() -> None:
    key = SigningKey.generate()
    data = seal({"x": 1}, "application/vnd.medsec.other+json", [key])
    with pytest.raises(SignatureError, match="expected"):
        open_envelope(data, TYPE, [key.verify_key])


def test_untrusted_signer_and_threshold() -> None:
    a, b, mallory = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    with pytest.raises(SignatureError, match="0 valid signature"):
        open_envelope(seal({"x": 1}, TYPE, [mallory]), TYPE, [a.verify_key])
    both = seal({"x": 1}, TYPE, [a, b])
    assert open_envelope(both, TYPE, [a.verify_key, b.verify_key], threshold=2) == {"x": 1}
    # The same key twice does not count twice.
    twice = seal({"x": 1}, TYPE, [a, a])
    with pytest.raises(SignatureError, match="1 valid signature"):
        open_envelope(twice, TYPE, [a.verify_key, b.verify_key], threshold=2)


@pytest.mark.parametrize("data", [b"", b"[]", b'{"payloadType": 1}', b'{"payloadType": "' + TYPE.encode() + b'"}'])
def test_malformed_envelopes_name_the_problem(data: bytes) -> None:
    with pytest.raises((EnvelopeError, SignatureError)):
        open_envelope(data, TYPE, [SigningKey.generate().verify_key])
