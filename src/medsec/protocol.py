"""Messages between a device (medsec agent) and the manufacturer server.

Both sides import this module, so the signed bytes are defined once. Every
signed message is ``<context>\\n<canonical JSON of the body>`` where the
context string separates message kinds (an enrollment proof can never be
replayed as a check-in). Wire format (JSON over HTTPS):

``POST /api/v1/enroll``
    ``{"request": EnrollmentRequest, "signature": b64}``, signed by the new
    device key (proof of possession). Answer: :class:`EnrollmentResponse`.
``POST /api/v1/checkin``
    ``{"report": VersionReport, "signature": b64}``. Answer:
    :class:`CheckinResponse`. A refusal is an HTTP 4xx with
    ``{"error": code, "detail": text}``; the codes are in :data:`CHECKIN_ERRORS`.
``GET /director/{serial}/metadata/{file}``
    The device's director metadata (docs/updates-format.md). The request carries
    ``X-Medsec-Device-Time`` (Unix seconds) and ``X-Medsec-Device-Signature``,
    the device key's signature over :func:`director_request_bytes`, so only the
    device itself reads what is assigned to it.
``POST /api/v1/devices/{serial}/nonce``
    ``{"nonce": current, "cosigned_checkpoint": note or null}``: lets a device
    that lost a response resynchronise, including which access-log tree the
    server last cosigned (the base of the next consistency proof). Harmless to
    expose: a nonce is useless without the device key, and the checkpoint is
    signed by the device and cosigned by the server.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass
from typing import Any

from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import ProtocolError, SignatureError

ENROLL_CONTEXT = b"medsec-enroll-v1"
CHECKIN_CONTEXT = b"medsec-checkin-v1"
DIRECTOR_GET_CONTEXT = b"medsec-director-get-v1"
DEVICE_TIME_HEADER = "X-Medsec-Device-Time"
DEVICE_SIGNATURE_HEADER = "X-Medsec-Device-Signature"

# States a device may report in the ``update`` object of a version report.
UPDATE_STATES = frozenset(
    {
        "idle",
        "downloading",
        "downloaded",
        "waiting_for_window",
        "installing",
        "switched",
        "health_check",
        "committed",
        "rolled_back",
        "failed",
    }
)
UPDATE_FIELDS = ("state", "release_counter", "target", "reason", "campaign")
MAX_REASON = 1000

# Refusal codes the check-in endpoint returns (HTTP status in the value).
CHECKIN_ERRORS: dict[str, int] = {
    "malformed_report": 422,
    "unknown_device": 404,
    "device_not_enrolled": 409,
    "device_retired": 403,
    "bad_signature": 401,
    "serial_mismatch": 400,
    "hardware_id_mismatch": 400,
    "stale_nonce": 409,
    "counter_not_increasing": 409,
    "bad_log_checkpoint": 422,
    "log_fork_detected": 409,
}

MAX_FIELD = 256


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_field(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"{name} is not valid base64") from e


def signed_bytes(context: bytes, body: dict[str, Any]) -> bytes:
    return context + b"\n" + canonical_json(body)


def director_request_bytes(serial: str, path: str, unix_time: int) -> bytes:
    """What a device signs to read its own director metadata at ``path``."""
    return signed_bytes(DIRECTOR_GET_CONTEXT, {"serial": serial, "path": path, "time": unix_time})


def sign_director_request(key: SigningKey, serial: str, path: str, unix_time: int) -> dict[str, str]:
    """The headers of a director metadata request."""
    signature = _b64(key.sign(director_request_bytes(serial, path, unix_time)))
    return {DEVICE_TIME_HEADER: str(unix_time), DEVICE_SIGNATURE_HEADER: signature}


def normalize_update(value: Any) -> dict[str, Any] | None:
    """Check a report's ``update`` object and give it its one signed form (every field, None when absent)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("report field 'update' must be an object")
    unknown = set(value) - set(UPDATE_FIELDS)
    if unknown:
        raise ProtocolError(f"report field 'update' has unknown keys: {sorted(unknown)}")
    out = {name: value.get(name) for name in UPDATE_FIELDS}
    if out["state"] not in UPDATE_STATES:
        raise ProtocolError("update.state is not a known update state")
    counter = out["release_counter"]
    if counter is not None and (not isinstance(counter, int) or isinstance(counter, bool) or counter < 0):
        raise ProtocolError("update.release_counter must be a non-negative integer")
    for name, limit in (("target", MAX_FIELD), ("campaign", 64), ("reason", MAX_REASON)):
        text = out[name]
        if text is not None and (not isinstance(text, str) or len(text) > limit):
            raise ProtocolError(f"update.{name} must be a string of at most {limit}")
    return out


@dataclass(frozen=True)
class EnrollmentRequest:
    token: str
    serial: str
    hardware_id: str
    public_key: str  # base64 of the raw Ed25519 key

    def sign(self, key: SigningKey) -> dict[str, Any]:
        body = asdict(self)
        return {"request": body, "signature": _b64(key.sign(signed_bytes(ENROLL_CONTEXT, body)))}

    @classmethod
    def verify(cls, request: dict[str, Any], signature_b64: str) -> EnrollmentRequest:
        """Check the proof of possession: the request is signed by the key it carries."""
        req = cls(**request)
        key = VerifyKey.from_base64(req.public_key)
        key.verify(b64decode_field(signature_b64, "signature"), signed_bytes(ENROLL_CONTEXT, asdict(req)))
        return req


@dataclass(frozen=True)
class EnrollmentResponse:
    serial: str
    nonce: str
    server_log_key: str  # C2SP note verifier key of the server's audit log
    witness_key: str  # C2SP cosignature verifier key the server uses to cosign device log checkpoints
    checkin_interval_seconds: int


@dataclass(frozen=True)
class VersionReport:
    """A device's signed statement of what it runs, sent at every check-in."""

    serial: str
    hardware_id: str
    installed_version: str
    agent_state: str
    counter: int  # strictly increasing per device, persisted before sending
    nonce: str  # the nonce the server gave in its previous answer
    sent_at: int  # device clock, Unix seconds (informational; freshness comes from the nonce)
    log_checkpoint: str | None = None  # the device access log's signed checkpoint note
    log_consistency_proof: tuple[str, ...] = ()  # base64 hashes from the last cosigned size
    # The update state machine's status (SM-1): {state, release_counter, target, reason, campaign}.
    update: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "serial": self.serial,
            "hardware_id": self.hardware_id,
            "installed_version": self.installed_version,
            "agent_state": self.agent_state,
            "counter": self.counter,
            "nonce": self.nonce,
            "sent_at": self.sent_at,
            "log_checkpoint": self.log_checkpoint,
            "log_consistency_proof": list(self.log_consistency_proof),
        }
        if self.update is not None:
            # Only present when set, so reports of agents without an updater keep their signed bytes.
            body["update"] = normalize_update(self.update)
        return body

    def sign(self, key: SigningKey) -> dict[str, Any]:
        body = self.to_json()
        return {"report": body, "signature": _b64(key.sign(signed_bytes(CHECKIN_CONTEXT, body)))}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> VersionReport:
        try:
            fields = dict(body)
            fields["log_consistency_proof"] = tuple(fields.get("log_consistency_proof") or ())
            fields["update"] = normalize_update(fields.get("update"))
            report = cls(**fields)
        except TypeError as e:
            raise ProtocolError(f"report has unexpected or missing fields: {e}") from e
        for name in ("serial", "hardware_id", "installed_version", "agent_state", "nonce"):
            value = getattr(report, name)
            if not isinstance(value, str) or not value or len(value) > MAX_FIELD:
                raise ProtocolError(f"report field {name!r} must be a non-empty string of at most {MAX_FIELD}")
        if not isinstance(report.counter, int) or isinstance(report.counter, bool) or report.counter < 1:
            raise ProtocolError("report field 'counter' must be a positive integer")
        if not isinstance(report.sent_at, int) or isinstance(report.sent_at, bool):
            raise ProtocolError("report field 'sent_at' must be an integer")
        return report

    @classmethod
    def verify(cls, body: dict[str, Any], signature_b64: str, key: VerifyKey) -> VersionReport:
        """Return the report if ``signature_b64`` is ``key``'s signature over it; raise otherwise."""
        report = cls.from_json(body)
        try:
            key.verify(b64decode_field(signature_b64, "signature"), signed_bytes(CHECKIN_CONTEXT, report.to_json()))
        except SignatureError:
            raise
        return report


@dataclass(frozen=True)
class CheckinResponse:
    nonce: str  # to be echoed in the next report
    checkin_interval_seconds: int
    cosigned_checkpoint: str | None = None  # the device log checkpoint with the server's witness cosignature
