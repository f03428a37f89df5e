"""One-time codes for the device's local maintenance mode (PA-3), when no ticket can reach the device.

Both ends derive the same secret without sending one: the server from the hospital approval key
and the device's enrolled public key, the device from its own key and the approval public key it
trusts (X25519 on the Ed25519 keys, RFC 7748 4.1 birational map, then HKDF-SHA256). The server
shows the code only to the engineer of an approved session, in that session's window; the device
checks it offline. A code is bound to the device, the session id and a 10-minute time step, and the
device accepts each code once. Anyone who can compute it holds the approval key or the device key.

::

    secret = HKDF-SHA256(X25519(own_private, peer_public), info="medsec local maintenance v1|" + serial)
    code   = 8 digits of HMAC-SHA256(secret, session_id + "|" + step), dynamic truncation as RFC 4226 5.3
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.remote.errors import AccessRefused

STEP_SECONDS = 600
DIGITS = 8
_P = 2**255 - 19
_INFO = b"medsec local maintenance v1|"


def _x25519_private(key: SigningKey) -> X25519PrivateKey:
    private = serialization.load_pem_private_key(key.to_pem(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    # RFC 8032 5.1.5: the scalar is the first half of SHA-512(seed); X25519 clamps it again.
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def _x25519_public(key: VerifyKey) -> X25519PublicKey:
    y = int.from_bytes(key.raw, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise AccessRefused("bad_public_key", "the peer key cannot be used for a maintenance code")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P  # RFC 7748 4.1: u = (1 + y) / (1 - y)
    return X25519PublicKey.from_public_bytes(u.to_bytes(32, "little"))


def shared_secret(own: SigningKey, peer: VerifyKey, serial: str) -> bytes:
    try:
        raw = _x25519_private(own).exchange(_x25519_public(peer))
    except ValueError as e:  # an all-zero result: a low-order peer key
        raise AccessRefused("bad_public_key", "the peer key cannot be used for a maintenance code") from e
    return HKDF(hashes.SHA256(), 32, salt=None, info=_INFO + serial.encode("utf-8")).derive(raw)


def code_at(secret: bytes, session_id: str, step: int) -> str:
    mac = hmac.new(secret, f"{session_id}|{step}".encode(), hashlib.sha256).digest()
    offset = mac[-1] & 0x0F
    number = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(number % 10**DIGITS).zfill(DIGITS)


def issue_code(approval_key: SigningKey, device_key: VerifyKey, serial: str, session_id: str, now: int) -> str:
    """The server's side: the code the engineer types at the device, valid this step and the next."""
    return code_at(shared_secret(approval_key, device_key, serial), session_id, now // STEP_SECONDS)


def verify_code(
    device_key: SigningKey, approval_key: VerifyKey, serial: str, session_id: str, code: str, now: int
) -> int:
    """The device's side: return the time step the code belongs to, or raise AccessRefused."""
    given = code.strip()
    if len(given) != DIGITS or not given.isdigit():
        raise AccessRefused("malformed_code", f"a maintenance code has {DIGITS} digits")
    secret = shared_secret(device_key, approval_key, serial)
    step = now // STEP_SECONDS
    for candidate in (step, step - 1):
        if hmac.compare_digest(code_at(secret, session_id, candidate), given):
            return candidate
    raise AccessRefused("bad_code", "the maintenance code is wrong for this device, session or time")
