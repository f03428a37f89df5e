"""The signed batch in which a device uploads its protection events and counters (RL-1, RL-3, PA-2).

Both the agent and the server import this module, so the signed bytes are defined once.
A batch is canonical JSON (:func:`medsec.crypto.canonical_json`)::

    {"serial": "IC300-0001",
     "seq": 17,                       # strictly increasing per device, persisted by the agent
     "sent": 1764151200,              # device clock, Unix seconds
     "events": [ProtectionEvent JSON, ...],          # at most MAX_EVENTS
     "metrics": Metrics snapshot (wire form) or null,
     "engine": {"mode": "enforce", "policy_version": "12", "trustdb_version": "2026.11.3" or null}}

``engine.mode`` is ``learn``, ``monitor`` or ``enforce`` while the allowlisting engine runs, and
``off`` when it could not start; an ``off`` engine carries ``off_reason`` (why, in words: "not
root", "fanotify unavailable", "no verified trust database"…), which no other mode may carry::

     "engine": {"mode": "off", "off_reason": "not root", "policy_version": "3", "trustdb_version": null}

Batches from agents that predate ``off`` (no ``off_reason`` field) are accepted as they are.

``POST /api/v1/devices/{serial}/protection-events`` carries these bytes as the body and the
device key's Ed25519 signature over ``CONTEXT + b"\\n" + body`` in ``X-Medsec-Device-Signature``
(base64). The context string keeps a batch signature from ever passing as a check-in, an
enrollment proof or a director request, which sign the same way with other contexts
(:mod:`medsec.protocol`). The body must be exactly the canonical encoding, so one batch has one
byte form and a retry is recognised by its SHA-256.

The metrics snapshot leaves out ``cache_hit_ratio``: canonical JSON has no floats, and the ratio
follows from ``cache_hits`` and ``cache_misses``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CanonicalEncodingError, ProtocolError, SignatureError
from medsec.protect.events import MODES, ProtectionEvent

CONTEXT = b"medsec-protection-events-v1"
SIGNATURE_HEADER = "X-Medsec-Device-Signature"
MAX_EVENTS = 500
# 256 kB, kept below the server's general 256 KiB request limit so an oversize batch gets its own refusal.
MAX_BATCH_BYTES = 256_000
MAX_SEQ = 2**53 - 1
MAX_VERSION = 64
MAX_RULES = 256
MAX_BUCKETS = 32
SERIAL_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_RULE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")

BATCH_FIELDS = ("serial", "seq", "sent", "events", "metrics", "engine")
ENGINE_FIELDS = ("mode", "policy_version", "trustdb_version")
ENGINE_OPTIONAL_FIELDS = ("off_reason",)
OFF = "off"
ENGINE_MODES = (*MODES, OFF)
MAX_OFF_REASON = 200
METRICS_FIELDS = (
    "decisions",
    "cache_hits",
    "cache_misses",
    "max_queue_depth",
    "latency_buckets_us",
    "latency_counts",
)


class BatchFormatError(ProtocolError):
    """A batch that cannot be accepted as sent. ``code`` is the server's refusal code
    (``malformed_batch``, ``bad_event`` or ``batch_too_large``) and ``field`` names the culprit,
    e.g. ``events[3]`` or ``engine.mode``."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code = code
        self.field = field

    def diagnostics(self) -> str:
        return f"{self.code}: {self}"


def _malformed(field: str, message: str) -> BatchFormatError:
    return BatchFormatError("malformed_batch", field, message)


def _count(value: Any, field: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_SEQ:
        raise _malformed(field, f"must be an integer from {minimum} to {MAX_SEQ}")
    return value


@dataclass(frozen=True)
class EngineState:
    """Which protection configuration produced the batch: mode and the versions in force.

    ``mode`` ``off`` says allowlisting is not running at all, and ``off_reason`` says why; a device
    never reports a stopped engine as ``monitor``.
    """

    mode: str
    policy_version: str
    trustdb_version: str | None = None
    off_reason: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ENGINE_MODES:
            raise _malformed("engine.mode", f"must be one of {', '.join(ENGINE_MODES)}")
        reason = self.off_reason
        if self.mode == OFF:
            if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_OFF_REASON:
                raise _malformed(
                    "engine.off_reason", f"an off engine needs a reason of 1 to {MAX_OFF_REASON} characters"
                )
        elif reason is not None:
            raise _malformed("engine.off_reason", f"only an off engine carries a reason (mode is {self.mode})")
        if not isinstance(self.policy_version, str) or not 0 < len(self.policy_version) <= MAX_VERSION:
            raise _malformed("engine.policy_version", f"must be a string of 1 to {MAX_VERSION} characters")
        tdb = self.trustdb_version
        if tdb is not None and (not isinstance(tdb, str) or not 0 < len(tdb) <= MAX_VERSION):
            raise _malformed("engine.trustdb_version", f"must be null or a string of 1 to {MAX_VERSION} characters")

    def to_json(self) -> dict[str, Any]:
        """The wire form; ``off_reason`` only on an off engine, so other batches keep their old shape."""
        value: dict[str, Any] = {
            "mode": self.mode,
            "policy_version": self.policy_version,
            "trustdb_version": self.trustdb_version,
        }
        if self.off_reason is not None:
            value["off_reason"] = self.off_reason
        return value

    @classmethod
    def from_json(cls, value: Any) -> EngineState:
        if not isinstance(value, dict) or not set(ENGINE_FIELDS) <= set(value) <= {
            *ENGINE_FIELDS,
            *ENGINE_OPTIONAL_FIELDS,
        }:
            raise _malformed(
                "engine",
                f"must be an object with {', '.join(ENGINE_FIELDS)} and, when off, {', '.join(ENGINE_OPTIONAL_FIELDS)}",
            )
        if "off_reason" in value and value["off_reason"] is None:
            raise _malformed("engine.off_reason", "is left out rather than null")
        return cls(value["mode"], value["policy_version"], value["trustdb_version"], value.get("off_reason"))


def metrics_for_wire(snapshot: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The wire form of :meth:`medsec.protect.events.Metrics.snapshot` (the float ratio left out), checked."""
    if snapshot is None:
        return None
    return check_metrics({name: snapshot.get(name) for name in METRICS_FIELDS})


def check_metrics(value: Any) -> dict[str, Any]:
    """Check a wire metrics object and return it; faults name the field."""
    if not isinstance(value, dict) or set(value) != set(METRICS_FIELDS):
        raise _malformed("metrics", f"must be null or an object with exactly {', '.join(METRICS_FIELDS)}")
    decisions = value["decisions"]
    if not isinstance(decisions, dict) or len(decisions) > MAX_RULES:
        raise _malformed("metrics.decisions", f"must be an object of at most {MAX_RULES} rules")
    for rule, n in decisions.items():
        if not isinstance(rule, str) or not _RULE_RE.match(rule):
            raise _malformed("metrics.decisions", f"rule name {str(rule)[:70]!r} is not a short snake_case name")
        _count(n, f"metrics.decisions.{rule}")
    for name in ("cache_hits", "cache_misses", "max_queue_depth"):
        _count(value[name], f"metrics.{name}")
    bounds, counts = value["latency_buckets_us"], value["latency_counts"]
    if not isinstance(bounds, list) or not 0 < len(bounds) <= MAX_BUCKETS:
        raise _malformed("metrics.latency_buckets_us", f"must be a list of 1 to {MAX_BUCKETS} bounds")
    for i, bound in enumerate(bounds):
        _count(bound, f"metrics.latency_buckets_us[{i}]", minimum=1)
        if i and bound <= bounds[i - 1]:
            raise _malformed("metrics.latency_buckets_us", "bounds must increase strictly")
    if not isinstance(counts, list) or len(counts) != len(bounds) + 1:
        raise _malformed("metrics.latency_counts", "must have one count per bound plus one for everything above")
    for i, n in enumerate(counts):
        _count(n, f"metrics.latency_counts[{i}]")
    return value


@dataclass(frozen=True)
class ProtectionBatch:
    serial: str
    seq: int
    sent: int
    events: tuple[ProtectionEvent, ...]
    engine: EngineState
    metrics: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "seq": self.seq,
            "sent": self.sent,
            "events": [e.to_json() for e in self.events],
            "metrics": self.metrics,
            "engine": self.engine.to_json(),
        }

    def encode(self) -> bytes:
        """The canonical body; refuses a batch the server would refuse for its size or shape."""
        if len(self.events) > MAX_EVENTS:
            raise BatchFormatError("batch_too_large", "events", f"a batch has at most {MAX_EVENTS} events")
        if not SERIAL_RE.match(self.serial):
            raise _malformed("serial", "must be 1-100 letters, digits, '.', '_' or '-'")
        _count(self.seq, "seq", minimum=1)
        _count(self.sent, "sent")
        if self.metrics is not None:
            check_metrics(self.metrics)
        try:
            body = canonical_json(self.to_json())
        except CanonicalEncodingError as e:
            raise _malformed("batch", str(e)) from e
        if len(body) > MAX_BATCH_BYTES:
            raise BatchFormatError("batch_too_large", "batch", f"{len(body)} bytes is over {MAX_BATCH_BYTES}")
        return body

    def sign(self, key: SigningKey) -> tuple[bytes, str]:
        """The body and the base64 signature to send with it."""
        body = self.encode()
        return body, base64.b64encode(key.sign(signed_message(body))).decode("ascii")


def signed_message(body: bytes) -> bytes:
    return CONTEXT + b"\n" + body


def batch_digest(body: bytes) -> str:
    """Hex SHA-256 of the body: what identifies a batch on retry and in the audit log."""
    return hashlib.sha256(body).hexdigest()


def verify_signature(body: bytes, signature_b64: str, key: VerifyKey) -> None:
    """Raise SignatureError unless ``signature_b64`` is ``key``'s signature over the batch ``body``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureError("the batch signature is not valid base64") from e
    key.verify(signature, signed_message(body))


def _parse_events(value: Any) -> tuple[ProtectionEvent, ...]:
    if not isinstance(value, list):
        raise _malformed("events", "must be a list")
    if len(value) > MAX_EVENTS:
        raise BatchFormatError("batch_too_large", "events", f"{len(value)} events is over {MAX_EVENTS}")
    events = []
    for i, raw in enumerate(value):
        try:
            event = ProtectionEvent.from_json(raw)
        except ProtocolError as e:
            raise BatchFormatError("bad_event", f"events[{i}]", str(e)) from e
        if event.to_json() != raw:
            # Every field is sent (null where unknown), so what is stored is all that was signed.
            raise BatchFormatError("bad_event", f"events[{i}]", "must carry every event field, null where unknown")
        events.append(event)
    return tuple(events)


def parse_batch(body: bytes) -> ProtectionBatch:
    """Parse and check a batch body; every fault raises :class:`BatchFormatError` naming the field.

    The server calls this only after :func:`verify_signature`, so it parses only what the device signed.
    """
    if len(body) > MAX_BATCH_BYTES:
        raise BatchFormatError("batch_too_large", "batch", f"{len(body)} bytes is over {MAX_BATCH_BYTES}")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _malformed("batch", f"is not UTF-8 JSON: {e}") from e
    if not isinstance(value, dict):
        raise _malformed("batch", "must be a JSON object")
    missing = [name for name in BATCH_FIELDS if name not in value]
    unknown = sorted(set(value) - set(BATCH_FIELDS))
    if missing or unknown:
        raise _malformed(
            (missing or unknown)[0], f"batch fields missing: {missing or 'none'}, unknown: {unknown or 'none'}"
        )
    serial = value["serial"]
    if not isinstance(serial, str) or not SERIAL_RE.match(serial):
        raise _malformed("serial", "must be 1-100 letters, digits, '.', '_' or '-'")
    batch = ProtectionBatch(
        serial=serial,
        seq=_count(value["seq"], "seq", minimum=1),
        sent=_count(value["sent"], "sent"),
        events=_parse_events(value["events"]),
        engine=EngineState.from_json(value["engine"]),
        metrics=None if value["metrics"] is None else check_metrics(value["metrics"]),
    )
    try:
        canonical = canonical_json(value)
    except CanonicalEncodingError as e:
        raise _malformed("batch", str(e)) from e
    if canonical != body:
        raise _malformed("batch", "is not in canonical JSON form (sorted keys, no whitespace, no duplicates)")
    return batch


def verify_batch(body: bytes, signature_b64: str, key: VerifyKey) -> ProtectionBatch:
    """Signature first, then the contents: the one call a receiver needs."""
    verify_signature(body, signature_b64, key)
    return parse_batch(body)


@dataclass(frozen=True)
class BatchReceipt:
    """The server's answer to an accepted batch (the same answer again when the same batch is retried)."""

    serial: str
    seq: int
    events: int
    received_at: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "seq": self.seq,
            "events": self.events,
            "received_at": self.received_at,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, value: Any) -> BatchReceipt:
        if not isinstance(value, dict):
            raise ProtocolError("a batch receipt must be a JSON object")
        serial, received, digest = value.get("serial"), value.get("received_at"), value.get("sha256")
        if not isinstance(serial, str) or not SERIAL_RE.match(serial):
            raise ProtocolError("receipt field 'serial' must be a device serial")
        if not isinstance(received, str) or not 0 < len(received) <= 64:
            raise ProtocolError("receipt field 'received_at' must be a timestamp string")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ProtocolError("receipt field 'sha256' must be 64 lowercase hex digits")
        for name in ("seq", "events"):
            n = value.get(name)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ProtocolError(f"receipt field {name!r} must be a non-negative integer")
        return cls(serial, value["seq"], value["events"], received, digest)


def build_batch(
    serial: str,
    seq: int,
    sent: int,
    events: Sequence[ProtectionEvent],
    engine: EngineState,
    metrics_snapshot: Mapping[str, Any] | None = None,
) -> ProtectionBatch:
    """A batch from engine values, with the metrics snapshot put in its wire form."""
    return ProtectionBatch(serial, seq, sent, tuple(events), engine, metrics_for_wire(metrics_snapshot))
