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
from medsec.errors import ProtocolError

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
# Bounds of a check-in body (the server's OpenAPI document states the same numbers).
MAX_ID_FIELD = 100  # serial, hardware id, installed version
MAX_TOKEN_FIELD = 64  # agent state, nonce, one consistency-proof hash, campaign
MAX_CHECKPOINT = 8192
MAX_PROOF_HASHES = 64
MAX_SIGNATURE = 128
MAX_JSON_INT = 2**53 - 1  # the largest integer every JSON reader keeps exact (RFC 8259 section 6)
REPORT_FIELDS = frozenset(
    {
        "serial",
        "hardware_id",
        "installed_version",
        "agent_state",
        "counter",
        "nonce",
        "sent_at",
        "log_checkpoint",
        "log_consistency_proof",
        "update",
    }
)
REQUIRED_REPORT_FIELDS = REPORT_FIELDS - {"log_checkpoint", "log_consistency_proof", "update"}


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
    if counter is not None and (
        not isinstance(counter, int) or isinstance(counter, bool) or not 0 <= counter <= MAX_JSON_INT
    ):
        raise ProtocolError("update.release_counter must be a non-negative integer")
    for name, limit in (("target", MAX_FIELD), ("campaign", MAX_TOKEN_FIELD), ("reason", MAX_REASON)):
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
    def from_json(cls, body: Any) -> VersionReport:
        """The one parser of a report, for the server and for tests: exact field names, JSON types without
        coercion, and the bounds above. Raises ProtocolError naming the field."""
        if not isinstance(body, dict):
            raise ProtocolError("report must be an object")
        unknown = set(body) - REPORT_FIELDS
        if unknown:
            raise ProtocolError(f"report has unknown fields: {sorted(unknown)}")
        missing = REQUIRED_REPORT_FIELDS - set(body)
        if missing:
            raise ProtocolError(f"report is missing fields: {sorted(missing)}")
        checkpoint = body.get("log_checkpoint")
        if checkpoint is not None and (not isinstance(checkpoint, str) or len(checkpoint) > MAX_CHECKPOINT):
            raise ProtocolError(f"report field 'log_checkpoint' must be a string of at most {MAX_CHECKPOINT}")
        return cls(
            serial=_text(body, "serial", MAX_ID_FIELD),
            hardware_id=_text(body, "hardware_id", MAX_ID_FIELD),
            installed_version=_text(body, "installed_version", MAX_ID_FIELD),
            agent_state=_text(body, "agent_state", MAX_TOKEN_FIELD),
            counter=_integer(body, "counter", 1),
            nonce=_text(body, "nonce", MAX_TOKEN_FIELD),
            sent_at=_integer(body, "sent_at", 0),
            log_checkpoint=checkpoint,
            log_consistency_proof=_proof(body.get("log_consistency_proof", [])),
            update=normalize_update(body.get("update")),
        )

    def verify_signature(self, signature_b64: str, key: VerifyKey) -> None:
        """Raise SignatureError unless ``signature_b64`` is ``key``'s signature over this report."""
        key.verify(b64decode_field(signature_b64, "signature"), signed_bytes(CHECKIN_CONTEXT, self.to_json()))

    @classmethod
    def verify(cls, body: dict[str, Any], signature_b64: str, key: VerifyKey) -> VersionReport:
        """Return the report if ``signature_b64`` is ``key``'s signature over it; raise otherwise."""
        report = cls.from_json(body)
        report.verify_signature(signature_b64, key)
        return report


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"report field {name!r} must be a non-empty string of at most {limit}")
    return value


def _integer(body: dict[str, Any], name: str, low: int) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_JSON_INT:
        raise ProtocolError(f"report field {name!r} must be an integer from {low} to {MAX_JSON_INT}")
    return value


def _proof(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_HASHES:
        raise ProtocolError(f"report field 'log_consistency_proof' must be a list of at most {MAX_PROOF_HASHES}")
    if not all(isinstance(item, str) and len(item) <= MAX_TOKEN_FIELD for item in value):
        raise ProtocolError(
            f"report field 'log_consistency_proof' holds strings of at most {MAX_TOKEN_FIELD} characters"
        )
    return tuple(value)


@dataclass(frozen=True)
class SignedVersionReport:
    """A check-in body as the server receives it: the report and the device's signature, parsed but not yet
    verified (the key to verify with is the one of the device the report names)."""

    report: VersionReport
    signature: str  # base64 Ed25519 signature over signed_bytes(CHECKIN_CONTEXT, report.to_json())

    @classmethod
    def from_json(cls, payload: Any) -> SignedVersionReport:
        if not isinstance(payload, dict):
            raise ProtocolError("a check-in body must be an object")
        if set(payload) != {"report", "signature"}:
            raise ProtocolError("a check-in body has exactly the fields 'report' and 'signature'")
        signature = payload["signature"]
        if not isinstance(signature, str) or not 1 <= len(signature) <= MAX_SIGNATURE:
            raise ProtocolError(f"field 'signature' must be a non-empty string of at most {MAX_SIGNATURE}")
        return cls(report=VersionReport.from_json(payload["report"]), signature=signature)


@dataclass(frozen=True)
class CheckinResponse:
    nonce: str  # to be echoed in the next report
    checkin_interval_seconds: int
    cosigned_checkpoint: str | None = None  # the device log checkpoint with the server's witness cosignature
