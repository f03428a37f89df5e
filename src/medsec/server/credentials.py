"""Password hashes (argon2id), TOTP second factors (RFC 6238) and opaque bearer secrets."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOTP_PERIOD = 30
TOTP_ISSUER = "medsec"

_hasher = PasswordHasher()

MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    """Constant-time argon2 check. (A bool, not a raise: callers log and count failures.)"""
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# A real hash of a random password, so an unknown username costs the same time as a known one.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def burn_password_check(password: str) -> None:
    password_matches(_DUMMY_HASH, password)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str) -> str:
    return str(pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER))


def totp_now(secret: str, at: datetime | None = None) -> str:
    totp = pyotp.TOTP(secret)
    return str(totp.at(at) if at else totp.now())


def totp_step_for(secret: str, code: str, at: datetime, last_step: int) -> int | None:
    """Return the time step ``code`` belongs to (±1 step of clock drift), or None.

    A step at or before ``last_step`` is refused so an observed code cannot be replayed.
    """
    code = code.strip().replace(" ", "")
    if not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    now_step = int(at.timestamp()) // TOTP_PERIOD
    for step in (now_step, now_step - 1, now_step + 1):
        if step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_secret(prefix: str) -> str:
    """An opaque bearer secret (API token, session cookie, enrollment token)."""
    return f"{prefix}{secrets.token_urlsafe(32)}"


def secret_digest(secret: str) -> str:
    """What the database stores instead of a bearer secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(24)
