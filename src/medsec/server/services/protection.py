"""Protection reports from devices (RL-1, RL-2, RL-3, PA-2): receive signed batches, show them per tenant.

A batch (:mod:`medsec.protect.wire`) is accepted only when it is signed by the device's enrolled
key, carries a sequence number above the last accepted one and was sent within
:data:`MAX_CLOCK_SKEW_SECONDS` of the server's clock. Each refusal is audited with its code; each
accepted batch appends one ``protection.events`` audit entry with its counts and digest, so every
blocked execution and integrity finding is traceable in the tamper-evident log.

Lock order inside a receiving transaction: the device row first, then protection rows, the audit
head last (as check-ins and campaign steps do), so concurrent batches cannot deadlock.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, insert, select
from sqlalchemy.orm import Session

from medsec.crypto.keys import VerifyKey
from medsec.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceError,
    SignatureError,
)
from medsec.protect.events import ACTIONS, CATEGORIES, LATENCY_BUCKETS_US
from medsec.protect.wire import (
    MAX_BATCH_BYTES,
    OFF,
    BatchFormatError,
    BatchReceipt,
    EngineState,
    ProtectionBatch,
    batch_digest,
    parse_batch,
    verify_signature,
)
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, DeviceStatus
from medsec.server.models_protect import ProtectionBatch as BatchRow
from medsec.server.models_protect import ProtectionEventRow, ProtectionStatus
from medsec.server.principal import Principal
from medsec.server.services.accounts import AuditedRefusal
from medsec.server.services.devices import get_device

MAX_CLOCK_SKEW_SECONDS = 300
MAX_SIGNATURE_CHARS = 128
ACCEPTED_EVENT = "protection.events"
REFUSED_EVENT = "protection.events_refused"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

BLOCKED_ACTIONS = ("deny", "would_deny")
INTEGRITY_ACTIONS = ("detected", "restored", "quarantined")
DRIFT_CATEGORIES = ("port", "interface", "usb", "console")
FLEET_DAYS = 7
# How agents before the explicit "off" mode said allowlisting was off: mode monitor, "3 (off: not root)".
_LEGACY_OFF = re.compile(r"^(?P<version>.*?) \(off: (?P<reason>.+)\)$")


class BatchTooLarge(ServiceError):
    """413: more events or bytes than one batch may carry."""

    status = 413


def _now() -> datetime:
    return datetime.now(UTC)


# -- receiving -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    id: int
    serial: str
    hospital_id: int
    status: str
    public_key: str | None


def _lock_device(session: Session, serial: str) -> _Target | None:
    row = session.execute(
        select(Device.id, Device.serial, Device.hospital_id, Device.status, Device.public_key)
        .where(Device.serial == serial)
        .with_for_update()
    ).one_or_none()
    if row is None:
        return None
    return _Target(row.id, row.serial, row.hospital_id, row.status, row.public_key)


def _refusal(error: ServiceError, device: _Target | None, details: dict[str, Any]) -> AuditedRefusal:
    return AuditedRefusal(
        error,
        REFUSED_EVENT,
        actor=f"device:{device.serial}" if device else "device:unknown",
        organization_id=device.hospital_id if device else None,
        details={"reason": error.code, **details},
    )


def _format_refusal(e: BatchFormatError) -> ServiceError:
    if e.code == "batch_too_large":
        return BatchTooLarge(e.code, str(e))
    return InvalidRequest(e.code, str(e))


def _receipt(serial: str, row: BatchRow) -> BatchReceipt:
    return BatchReceipt(serial, row.seq, row.event_count, row.received_at.strftime(TIME_FORMAT), row.sha256)


def receive_batch(
    session: Session,
    audit: ServerAuditLog,
    serial: str,
    body: bytes,
    signature: str | None,
    *,
    now: datetime | None = None,
) -> BatchReceipt:
    """Verify and store one signed batch; refusals raise :class:`AuditedRefusal` with a specific code."""
    now = now or _now()
    serial = serial[:100]
    details: dict[str, Any] = {"serial": serial, "bytes": len(body)}
    device = _lock_device(session, serial)

    def refuse(error: ServiceError) -> AuditedRefusal:
        return _refusal(error, device, details)

    if device is None:
        raise refuse(NotFound("unknown_device", f"no device {serial!r}"))
    if device.status == DeviceStatus.RETIRED.value:
        raise refuse(PermissionDenied("device_retired", "this device is retired"))
    if device.status != DeviceStatus.ACTIVE.value or device.public_key is None:
        raise refuse(Conflict("device_not_enrolled", "this device has not enrolled"))
    if len(body) > MAX_BATCH_BYTES:
        raise refuse(BatchTooLarge("batch_too_large", f"batch: {len(body)} bytes is over {MAX_BATCH_BYTES}"))
    if not signature or len(signature) > MAX_SIGNATURE_CHARS:
        raise refuse(AuthenticationFailed("bad_signature", "the batch carries no usable device signature"))
    try:
        verify_signature(body, signature, VerifyKey.from_base64(device.public_key))
    except SignatureError as e:
        raise refuse(
            AuthenticationFailed("bad_signature", "batch signature does not verify with the device key")
        ) from e
    digest = batch_digest(body)
    details["sha256"] = digest
    try:
        batch = parse_batch(body)
    except BatchFormatError as e:
        details["field"] = e.field
        raise refuse(_format_refusal(e)) from e
    details["seq"] = batch.seq
    if batch.serial != device.serial:
        raise refuse(InvalidRequest("malformed_batch", "serial: the batch names another device"))

    earlier = session.scalar(select(BatchRow).where(BatchRow.device_id == device.id, BatchRow.seq == batch.seq))
    if earlier is not None:
        if earlier.sha256 == digest:
            return _receipt(device.serial, earlier)  # a retry of an accepted batch: same answer, nothing stored
        raise refuse(Conflict("replayed_batch", f"seq {batch.seq} was already accepted with other contents"))
    skew = abs(now.timestamp() - batch.sent)
    if skew > MAX_CLOCK_SKEW_SECONDS:
        raise refuse(
            Conflict(
                "stale_batch", f"sent: {int(skew)} s away from the server clock (at most {MAX_CLOCK_SKEW_SECONDS})"
            )
        )
    status = session.get(ProtectionStatus, device.id)
    if status is not None and batch.seq <= status.last_seq:
        raise refuse(Conflict("replayed_batch", f"seq {batch.seq} is not above the last accepted {status.last_seq}"))
    row = _store(session, device, batch, status, digest=digest, signature=signature, now=now)
    audit.append(
        session,
        ACCEPTED_EVENT,
        actor=f"device:{device.serial}",
        organization_id=device.hospital_id,
        details=_audit_details(device.serial, batch, digest),
    )
    return _receipt(device.serial, row)


def _store(
    session: Session,
    device: _Target,
    batch: ProtectionBatch,
    status: ProtectionStatus | None,
    *,
    digest: str,
    signature: str,
    now: datetime,
) -> BatchRow:
    row = BatchRow(
        device_id=device.id,
        organization_id=device.hospital_id,
        seq=batch.seq,
        sha256=digest,
        signature=signature,
        sent_at=datetime.fromtimestamp(batch.sent, UTC),
        received_at=now,
        event_count=len(batch.events),
    )
    session.add(row)
    if batch.events:
        session.execute(insert(ProtectionEventRow), list(_event_rows(device, batch, now)))
    if status is None:
        status = ProtectionStatus(device_id=device.id, metrics=None)
        session.add(status)
    engine = reported_engine(batch.engine)
    status.mode = engine.mode
    status.off_reason = engine.off_reason
    status.policy_version = engine.policy_version
    status.trustdb_version = engine.trustdb_version
    if batch.metrics is not None:
        status.metrics = batch.metrics  # a batch without counters keeps the last snapshot
    status.last_seq = batch.seq
    status.updated_at = now
    session.flush()
    return row


def reported_engine(engine: EngineState) -> EngineState:
    """The engine state as stored: an older agent's ``monitor`` + "v (off: why)" is the off state it meant."""
    if engine.mode != "monitor":
        return engine
    legacy = _LEGACY_OFF.match(engine.policy_version)
    if legacy is None or not legacy["version"]:
        return engine
    return EngineState(OFF, legacy["version"], engine.trustdb_version, off_reason=legacy["reason"])


def _event_rows(device: _Target, batch: ProtectionBatch, now: datetime) -> Iterable[dict[str, Any]]:
    for index, e in enumerate(batch.events):
        yield {
            "device_id": device.id,
            "organization_id": device.hospital_id,
            "seq": batch.seq,
            "index": index,
            "category": e.category,
            "action": e.action,
            "mode": e.mode,
            "rule": e.rule,
            "subject_exe": e.subject.exe if e.subject else None,
            "subject_sha256": e.subject.sha256 if e.subject else None,
            "subject_pid": e.subject.pid if e.subject else None,
            "object_path": e.object.path if e.object else None,
            "object_sha256": e.object.sha256 if e.object else None,
            "detail": e.detail,
            "event_time": datetime.strptime(e.time, TIME_FORMAT).replace(tzinfo=UTC),
            "received_at": now,
        }


def _audit_details(serial: str, batch: ProtectionBatch, digest: str) -> dict[str, Any]:
    actions = Counter(e.action for e in batch.events)
    categories = Counter(e.category for e in batch.events)
    return {
        "serial": serial,
        "seq": batch.seq,
        "sha256": digest,
        "events": len(batch.events),
        "actions": dict(sorted(actions.items())),
        "categories": dict(sorted(categories.items())),
        "mode": batch.engine.mode,
        "policy_version": batch.engine.policy_version,
        "trustdb_version": batch.engine.trustdb_version,
        **({"off_reason": batch.engine.off_reason} if batch.engine.off_reason is not None else {}),
    }


# -- reading (tenant-scoped) -----------------------------------------------------------------------


def _scoped_events(actor: Principal, device_id: int) -> Any:
    stmt = select(ProtectionEventRow).where(ProtectionEventRow.device_id == device_id)
    if not actor.is_manufacturer:
        # Only what happened while the device belonged to the caller's hospital.
        stmt = stmt.where(ProtectionEventRow.organization_id == actor.organization_id)
    return stmt


def _check_choice(value: str | None, allowed: Sequence[str], name: str) -> None:
    if value is not None and value not in allowed:
        raise InvalidRequest(f"invalid_{name}", f"{name} must be one of {', '.join(allowed)}")


def list_events(
    session: Session,
    actor: Principal,
    serial: str,
    *,
    categories: Sequence[str] = (),
    actions: Sequence[str] = (),
    since: datetime | None = None,
    limit: int = 100,
) -> list[ProtectionEventRow]:
    """Events of a device the caller may see, newest first; filters combine with AND."""
    for values, allowed, name in ((categories, CATEGORIES, "category"), (actions, ACTIONS, "action")):
        if len(values) > len(allowed):
            raise InvalidRequest(f"invalid_{name}", f"name each {name} at most once")
        for value in values:
            _check_choice(value, allowed, name)
    device = get_device(session, actor, serial)
    stmt = _scoped_events(actor, device.id)
    if categories:
        stmt = stmt.where(ProtectionEventRow.category.in_(categories))
    if actions:
        stmt = stmt.where(ProtectionEventRow.action.in_(actions))
    if since is not None:
        stmt = stmt.where(ProtectionEventRow.event_time >= since)
    stmt = stmt.order_by(ProtectionEventRow.event_time.desc(), ProtectionEventRow.id.desc()).limit(limit)
    return list(session.scalars(stmt))


@dataclass(frozen=True)
class StatusView:
    """A device's protection status in plain values, with the figures the portal shows."""

    serial: str
    reported: bool
    mode: str | None = None
    off_reason: str | None = None
    policy_version: str | None = None
    trustdb_version: str | None = None
    last_seq: int | None = None
    updated_at: datetime | None = None
    metrics: dict[str, Any] | None = None

    @property
    def cache_hit_ratio(self) -> float | None:
        if not self.metrics:
            return None
        lookups = int(self.metrics["cache_hits"]) + int(self.metrics["cache_misses"])
        return int(self.metrics["cache_hits"]) / lookups if lookups else None

    @property
    def decisions(self) -> list[tuple[str, int]]:
        if not self.metrics:
            return []
        return sorted(self.metrics["decisions"].items(), key=lambda kv: (-kv[1], kv[0]))

    @property
    def latency_rows(self) -> list[tuple[int | None, int | None, int]]:
        """(lower bound, upper bound or None for the open bucket, count) in microseconds."""
        if not self.metrics:
            return []
        bounds = list(self.metrics.get("latency_buckets_us") or LATENCY_BUCKETS_US)
        counts = list(self.metrics["latency_counts"])
        lows: list[int | None] = [None, *bounds]
        highs: list[int | None] = [*bounds, None]
        return list(zip(lows, highs, counts, strict=True))


def get_status(session: Session, actor: Principal, serial: str) -> StatusView:
    device = get_device(session, actor, serial)
    row = session.get(ProtectionStatus, device.id)
    if row is None:
        return StatusView(serial=device.serial, reported=False)
    if not actor.is_manufacturer:
        # A status reported while the device belonged elsewhere is not the caller's to see.
        last = session.scalar(
            select(BatchRow.organization_id).where(BatchRow.device_id == device.id, BatchRow.seq == row.last_seq)
        )
        if last != actor.organization_id:
            return StatusView(serial=device.serial, reported=False)
    return StatusView(
        serial=device.serial,
        reported=True,
        mode=row.mode,
        off_reason=row.off_reason,
        policy_version=row.policy_version,
        trustdb_version=row.trustdb_version,
        last_seq=row.last_seq,
        updated_at=row.updated_at,
        metrics=row.metrics,
    )


@dataclass(frozen=True)
class FleetRow:
    serial: str
    hospital: str
    hospital_slug: str
    mode: str | None
    off_reason: str | None
    policy_version: str | None
    blocked: int
    integrity: int
    drift: int
    updated_at: datetime | None


def fleet_summary(
    session: Session, actor: Principal, *, days: int = FLEET_DAYS, now: datetime | None = None
) -> list[FleetRow]:
    """Per visible device: blocked executions, integrity events and port/USB drift in the last ``days``."""
    since = (now or _now()) - timedelta(days=days)
    e = ProtectionEventRow
    counts = select(
        e.device_id,
        func.sum(case((e.action.in_(BLOCKED_ACTIONS), 1), else_=0)).label("blocked"),
        func.sum(case(((e.category == "integrity") & e.action.in_(INTEGRITY_ACTIONS), 1), else_=0)).label("integrity"),
        func.sum(case((e.category.in_(DRIFT_CATEGORIES) & (e.action != "allow"), 1), else_=0)).label("drift"),
    ).where(e.event_time >= since)
    if not actor.is_manufacturer:
        counts = counts.where(e.organization_id == actor.organization_id)
    per_device = {r.device_id: r for r in session.execute(counts.group_by(e.device_id))}
    current = select(ProtectionStatus).join(
        BatchRow, (BatchRow.device_id == ProtectionStatus.device_id) & (BatchRow.seq == ProtectionStatus.last_seq)
    )
    if not actor.is_manufacturer:
        current = current.where(BatchRow.organization_id == actor.organization_id)
    statuses = {s.device_id: s for s in session.scalars(current)}
    rows = []
    for device in session.scalars(actor.scope_devices(select(Device)).order_by(Device.serial)):
        c = per_device.get(device.id)
        s = statuses.get(device.id)
        rows.append(
            FleetRow(
                serial=device.serial,
                hospital=device.hospital.name,
                hospital_slug=device.hospital.slug,
                mode=s.mode if s else None,
                off_reason=s.off_reason if s else None,
                policy_version=s.policy_version if s else None,
                blocked=int(c.blocked) if c else 0,
                integrity=int(c.integrity) if c else 0,
                drift=int(c.drift) if c else 0,
                updated_at=s.updated_at if s else None,
            )
        )
    return rows
