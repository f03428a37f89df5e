"""Session tickets: the hospital approval a device checks itself (RA-1).

A ticket is the canonical JSON of :class:`TicketClaims` signed with Ed25519 by
the server's approval key, under the context ``medsec-session-ticket-v1`` so it
can never be confused with another signed message. The gateway only carries
it; a gateway that holds the SSH CA key but no approval key cannot make one.

Each ticket has a fresh nonce and opens one engineer connection; the device
keeps the nonces it accepted until the ticket's window has passed, so a
captured ticket cannot be played again.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medsec.atomic_file import atomic_write
from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CanonicalEncodingError, SignatureError
from medsec.remote.errors import TicketError
from medsec.remote.session import MaintenanceSession, SessionId, SessionState, check_name, check_session_id

TICKET_CONTEXT = b"medsec-session-ticket-v1\n"
TICKET_VERSION = 1
MAX_TICKET_BYTES = 16384
# Tolerated clock difference between server and device, in seconds.
CLOCK_SKEW = 60


@dataclass(frozen=True)
class TicketClaims:
    """What the hospital approved, for one device, one session, one window."""

    device_serial: str
    session_id: SessionId
    engineer: str
    shell: bool
    file_transfer: bool
    ports: tuple[int, ...]
    not_before: int
    not_after: int
    approvers: tuple[str, ...]
    emergency: bool
    nonce: str
    version: int = TICKET_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "device_serial": self.device_serial,
            "session_id": self.session_id,
            "engineer": self.engineer,
            "shell": self.shell,
            "file_transfer": self.file_transfer,
            "ports": sorted(self.ports),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "approvers": list(self.approvers),
            "emergency": self.emergency,
            "nonce": self.nonce,
        }

    @classmethod
    def from_json(cls, data: Any) -> TicketClaims:
        if not isinstance(data, dict):
            raise TicketError("malformed_ticket", "ticket claims are not an object")
        try:
            claims = cls(
                device_serial=_typed(data, "device_serial", str),
                session_id=check_session_id(_typed(data, "session_id", str)),
                engineer=_typed(data, "engineer", str),
                shell=_typed(data, "shell", bool),
                file_transfer=_typed(data, "file_transfer", bool),
                ports=tuple(_int_list(data.get("ports"))),
                not_before=_typed(data, "not_before", int),
                not_after=_typed(data, "not_after", int),
                approvers=tuple(_str_list(data.get("approvers"))),
                emergency=_typed(data, "emergency", bool),
                nonce=_typed(data, "nonce", str),
                version=_typed(data, "version", int),
            )
        except TicketError:
            raise
        except Exception as e:  # a session-id or name check failing on remote data
            raise TicketError("malformed_ticket", f"ticket claims are invalid: {e}") from e
        if claims.version != TICKET_VERSION:
            raise TicketError("malformed_ticket", f"unknown ticket version {claims.version}")
        if set(data) != set(claims.to_json()):
            raise TicketError("malformed_ticket", "ticket has missing or unknown fields")
        return claims

    def allows_port(self, port: int) -> bool:
        return port in self.ports


def _typed(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TicketError("malformed_ticket", f"ticket field {key!r} must be {kind.__name__}")
    return value


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TicketError("malformed_ticket", "ticket field 'ports' must be a list of integers")
    return value


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TicketError("malformed_ticket", "ticket field 'approvers' must be a list of strings")
    return value


@dataclass(frozen=True)
class SessionTicket:
    """A signed ticket as it travels: the claims' canonical bytes and the signature."""

    payload: bytes
    signature: bytes

    def to_text(self) -> str:
        """One line of JSON, for headers and files."""
        return json.dumps(
            {
                "payload": base64.b64encode(self.payload).decode("ascii"),
                "signature": base64.b64encode(self.signature).decode("ascii"),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_text(cls, text: str | bytes) -> SessionTicket:
        if len(text) > MAX_TICKET_BYTES:
            raise TicketError("malformed_ticket", "ticket is too large")
        try:
            data = json.loads(text)
            payload = base64.b64decode(data["payload"], validate=True)
            signature = base64.b64decode(data["signature"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise TicketError("malformed_ticket", "ticket is not {payload, signature} in base64") from e
        return cls(payload, signature)

    def unverified_claims(self) -> TicketClaims:
        """The claims without any check; only for routing and display, never for a decision."""
        try:
            return TicketClaims.from_json(json.loads(self.payload))
        except ValueError as e:
            raise TicketError("malformed_ticket", "ticket payload is not JSON") from e


def issue_ticket(session: MaintenanceSession, approval_key: SigningKey, *, nonce: str | None = None) -> SessionTicket:
    """Sign a ticket for an approved (or emergency, active) session."""
    emergency_ok = session.emergency and session.state in (SessionState.REQUESTED, SessionState.ACTIVE)
    if session.state not in (SessionState.APPROVED, SessionState.ACTIVE) and not emergency_ok:
        raise TicketError("session_not_approved", f"session {session.id} is {session.state.value}")
    if session.state is SessionState.ACTIVE and not session.approved and not session.emergency:
        raise TicketError("session_not_approved", f"session {session.id} has no approval")
    req = session.request
    claims = TicketClaims(
        device_serial=req.device_serial,
        session_id=session.id,
        engineer=req.engineer,
        shell=req.capabilities.shell,
        file_transfer=req.capabilities.file_transfer,
        ports=tuple(sorted(req.capabilities.port_numbers)),
        not_before=req.window_start,
        not_after=req.window_end,
        approvers=session.approvers,
        emergency=session.emergency,
        nonce=nonce or secrets.token_hex(16),
    )
    return sign_claims(claims, approval_key)


def sign_claims(claims: TicketClaims, key: SigningKey) -> SessionTicket:
    payload = canonical_json(claims.to_json())
    return SessionTicket(payload, key.sign(TICKET_CONTEXT + payload))


class NonceStore(Protocol):
    """Nonces of tickets the device has accepted, kept until the ticket expires."""

    def __contains__(self, nonce: object) -> bool: ...

    def add(self, nonce: str, expires_at: int) -> None: ...


class MemoryNonceStore:
    def __init__(self) -> None:
        self._nonces: dict[str, int] = {}

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._nonces

    def add(self, nonce: str, expires_at: int) -> None:
        self._nonces[nonce] = expires_at


class FileNonceStore:
    """A nonce store that survives restarts: a JSON object written atomically on every add."""

    def __init__(self, path: Path, clock_now: int) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            raw = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as e:
            raise TicketError("nonce_store_damaged", f"cannot read nonce store {path}: {e}") from e
        if not isinstance(raw, dict):
            raise TicketError("nonce_store_damaged", f"nonce store {path} is not an object")
        # Expired tickets can never verify again, so their nonces need not be kept.
        self._nonces = {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and v + CLOCK_SKEW >= clock_now}

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._nonces

    def add(self, nonce: str, expires_at: int) -> None:
        with self._lock:
            self._nonces[nonce] = expires_at
            atomic_write(self._path, json.dumps(self._nonces, sort_keys=True).encode("utf-8"), mode=0o600)

    def nonces(self) -> Iterable[str]:
        return tuple(self._nonces)


def verify_ticket(
    ticket: SessionTicket,
    approval_key: VerifyKey,
    serial: str,
    now: int,
    seen_nonces: NonceStore,
    *,
    consume: bool = True,
) -> TicketClaims:
    """Check a ticket for this device at ``now`` and return its claims; raise TicketError otherwise.

    The signature is checked first so that unsigned data never touches the
    nonce store. With ``consume`` the nonce is remembered, so the same ticket
    is refused next time.
    """
    if len(ticket.payload) > MAX_TICKET_BYTES:
        raise TicketError("malformed_ticket", "ticket payload is too large")
    try:
        approval_key.verify(ticket.signature, TICKET_CONTEXT + ticket.payload)
    except SignatureError as e:
        raise TicketError("bad_ticket_signature", "the ticket is not signed by the hospital approval key") from e
    claims = ticket.unverified_claims()
    try:
        if canonical_json(claims.to_json()) != ticket.payload:
            raise TicketError("malformed_ticket", "ticket payload is not in canonical form")
    except CanonicalEncodingError as e:
        raise TicketError("malformed_ticket", str(e)) from e
    check_name(serial, "device serial")
    if claims.device_serial != serial:
        raise TicketError("wrong_device", f"ticket is for device {claims.device_serial}, this is {serial}")
    if now + CLOCK_SKEW < claims.not_before:
        raise TicketError("ticket_not_yet_valid", f"ticket window starts at {claims.not_before}, now is {now}")
    if now >= claims.not_after:
        raise TicketError("ticket_expired", f"ticket window ended at {claims.not_after}, now is {now}")
    if claims.nonce in seen_nonces:
        raise TicketError("ticket_replayed", f"ticket nonce {claims.nonce} was already used")
    if consume:
        seen_nonces.add(claims.nonce, claims.not_after)
    return claims


def require_capability(claims: TicketClaims, capability: str, port: int | None = None) -> None:
    """Raise TicketError(capability_not_granted) unless the ticket grants ``capability``."""
    granted = {
        "shell": claims.shell,
        "file_transfer": claims.file_transfer,
        "port_forward": port is not None and claims.allows_port(port),
    }.get(capability, False)
    if not granted:
        what = f"port forward to {port}" if capability == "port_forward" else capability
        raise TicketError("capability_not_granted", f"the ticket does not grant {what}")


def nonce_store_path(state_dir: Path) -> Path:
    return Path(os.fspath(state_dir)) / "ticket-nonces.json"
