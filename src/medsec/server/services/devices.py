"""Device models, device registration, enrollment with one-time tokens, and signed check-ins."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Protocol

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from medsec.auditlog.note import SIG_TYPE_ED25519, vkey_string
from medsec.auditlog.witness import Witness
from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import VerifyKey
from medsec.errors import (
    AuditLogError,
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ServiceError,
    SignatureError,
    WitnessError,
)
from medsec.protocol import (
    CheckinResponse,
    EnrollmentRequest,
    EnrollmentResponse,
    SignedVersionReport,
    b64decode_field,
)
from medsec.server import credentials
from medsec.server.audit import ServerAuditLog
from medsec.server.models import (
    Checkin,
    Device,
    DeviceLogCheckpoint,
    DeviceModel,
    DeviceStatus,
    EnrollmentToken,
    Organization,
    OrgKind,
    Role,
    Site,
)
from medsec.server.principal import Principal
from medsec.server.services.accounts import AuditedRefusal
from medsec.server.witness_state import DeviceLogIdentity, DeviceLogWitnessState, latest_cosigned_note

SERIAL_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
ENROLLMENT_TOKEN_PREFIX = "met_"  # noqa: S105 (a public prefix, not a secret)


def _now() -> datetime:
    return datetime.now(UTC)


def device_log_origin(serial: str) -> str:
    """Origin line (and note key name) of a device's access log checkpoints."""
    return f"medsec-device/{serial}"


# -- models --------------------------------------------------------------------------------------


def create_model(
    session: Session, audit: ServerAuditLog, actor: Principal | None, *, product: str, name: str, hardware_id: str
) -> DeviceModel:
    if actor is not None:
        actor.require_role(Role.MANUFACTURER_ADMIN)
    if not SERIAL_RE.match(hardware_id) or not SERIAL_RE.match(product):
        raise InvalidRequest("invalid_identifier", "product and hardware id use letters, digits, '.', '_' or '-'")
    if session.scalar(select(DeviceModel).where(DeviceModel.hardware_id == hardware_id)):
        raise Conflict("model_exists", f"a model with hardware id {hardware_id!r} exists")
    model = DeviceModel(product=product, name=name.strip() or product, hardware_id=hardware_id)
    session.add(model)
    session.flush()
    audit.append(
        session,
        "device_model.created",
        actor=actor.username if actor else "system",
        organization_id=None,
        details={"product": product, "name": model.name, "hardware_id": hardware_id},
    )
    return model


def list_models(session: Session) -> list[DeviceModel]:
    return list(session.scalars(select(DeviceModel).order_by(DeviceModel.product, DeviceModel.name)))


def get_model(session: Session, hardware_id: str) -> DeviceModel:
    model = session.scalar(select(DeviceModel).where(DeviceModel.hardware_id == hardware_id))
    if model is None:
        raise NotFound("unknown_model", f"no device model with hardware id {hardware_id!r}")
    return model


# -- devices -------------------------------------------------------------------------------------


def list_devices(session: Session, actor: Principal, *, hospital: Organization | None = None) -> list[Device]:
    stmt = actor.scope_devices(select(Device)).order_by(Device.serial)
    if hospital is not None:
        stmt = stmt.where(Device.hospital_id == hospital.id)
    return list(session.scalars(stmt))


def get_device(session: Session, actor: Principal, serial: str) -> Device:
    device = session.scalar(actor.scope_devices(select(Device)).where(Device.serial == serial))
    if device is None:
        raise NotFound("unknown_device", "no such device is visible to you")
    return device


def register_device(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal | None,
    *,
    serial: str,
    model: DeviceModel,
    hospital: Organization,
    site: Site | None,
    token_hours: int,
) -> tuple[Device, str]:
    """Register a device for a hospital and return it with its one-time enrollment token."""
    if actor is not None:
        actor.require_role(Role.MANUFACTURER_ADMIN)
    if not SERIAL_RE.match(serial):
        raise InvalidRequest("invalid_serial", "a serial uses 1-100 letters, digits, '.', '_' or '-'")
    if hospital.kind != OrgKind.HOSPITAL.value:
        raise InvalidRequest("not_a_hospital", "devices are registered to hospitals")
    if site is not None and site.organization_id != hospital.id:
        raise InvalidRequest("site_not_in_hospital", "the site belongs to another hospital")
    if session.scalar(select(Device).where(Device.serial == serial)):
        raise Conflict("device_exists", f"device {serial!r} is already registered")
    device = Device(
        serial=serial,
        model_id=model.id,
        hospital_id=hospital.id,
        site_id=site.id if site else None,
        status=DeviceStatus.PENDING.value,
        last_counter=0,
    )
    session.add(device)
    session.flush()
    audit.append(
        session,
        "device.registered",
        actor=actor.username if actor else "system",
        organization_id=hospital.id,
        details={"serial": serial, "hardware_id": model.hardware_id, "site": site.name if site else None},
    )
    token = issue_enrollment_token(session, audit, actor, device, hours=token_hours)
    return device, token


def issue_enrollment_token(
    session: Session, audit: ServerAuditLog, actor: Principal | None, device: Device, *, hours: int
) -> str:
    if actor is not None:
        actor.require_role(Role.MANUFACTURER_ADMIN)
    if device.status == DeviceStatus.RETIRED.value:
        raise Conflict("device_retired", "a retired device cannot enroll")
    secret = credentials.new_secret(ENROLLMENT_TOKEN_PREFIX)
    session.add(
        EnrollmentToken(
            device_id=device.id,
            token_hash=credentials.secret_digest(secret),
            created_by=actor.user_id if actor else None,
            created_at=_now(),
            expires_at=_now() + timedelta(hours=hours),
        )
    )
    session.flush()
    audit.append(
        session,
        "device.enrollment_token_issued",
        actor=actor.username if actor else "system",
        organization_id=device.hospital_id,
        details={"serial": device.serial, "expires_hours": hours},
    )
    return secret


class _Identified(Protocol):
    @property
    def serial(self) -> str: ...

    @property
    def hospital_id(self) -> int: ...


def _refuse(error: ServiceError, event: str, device: _Identified | None, details: dict[str, Any]) -> AuditedRefusal:
    return AuditedRefusal(
        error,
        event,
        actor=f"device:{device.serial}" if device else "device:unknown",
        organization_id=device.hospital_id if device else None,
        details={"reason": error.code, **details},
    )


def enroll(
    session: Session,
    audit: ServerAuditLog,
    payload: dict[str, Any],
    *,
    server_log_key: str,
    witness_key: str,
    checkin_interval_seconds: int,
) -> EnrollmentResponse:
    """Enroll a device: one-time token + proof that it holds the key it presents."""
    try:
        request = EnrollmentRequest.verify(dict(payload["request"]), str(payload["signature"]))
    except (KeyError, TypeError) as e:
        raise _refuse(
            InvalidRequest("malformed_request", f"enrollment request is malformed: {e}"),
            "device.enroll_refused",
            None,
            {},
        ) from e
    except (SignatureError, ProtocolError) as e:
        raise _refuse(
            AuthenticationFailed("bad_signature", "enrollment proof of possession does not verify"),
            "device.enroll_refused",
            None,
            {},
        ) from e
    token = session.scalar(
        select(EnrollmentToken)
        .where(EnrollmentToken.token_hash == credentials.secret_digest(request.token))
        .with_for_update()
    )
    if token is None:
        raise _refuse(
            AuthenticationFailed("invalid_enrollment_token", "unknown enrollment token"),
            "device.enroll_refused",
            None,
            {"serial": request.serial[:100]},
        )
    device = token.device
    details = {"serial": request.serial[:100]}
    if token.used_at is not None:
        if device.status == DeviceStatus.ACTIVE.value and device.public_key == request.public_key and device.nonce:
            # The same device asking again (it crashed before saving our answer): answer again.
            return EnrollmentResponse(
                serial=device.serial,
                nonce=device.nonce,
                server_log_key=server_log_key,
                witness_key=witness_key,
                checkin_interval_seconds=checkin_interval_seconds,
            )
        raise _refuse(
            Conflict("enrollment_token_used", "this enrollment token was already used"),
            "device.enroll_refused",
            device,
            details,
        )
    if token.expires_at <= _now():
        raise _refuse(
            AuthenticationFailed("enrollment_token_expired", "this enrollment token has expired"),
            "device.enroll_refused",
            device,
            details,
        )
    if request.serial != device.serial:
        raise _refuse(
            InvalidRequest("serial_mismatch", "the token was issued for another device"),
            "device.enroll_refused",
            device,
            details,
        )
    if request.hardware_id != device.model.hardware_id:
        raise _refuse(
            InvalidRequest("hardware_id_mismatch", "the hardware id does not match the registered model"),
            "device.enroll_refused",
            device,
            details,
        )
    if device.status == DeviceStatus.RETIRED.value:
        raise _refuse(
            PermissionDenied("device_retired", "this device is retired"), "device.enroll_refused", device, details
        )
    token.used_at = _now()
    device.public_key = request.public_key
    device.status = DeviceStatus.ACTIVE.value
    device.enrolled_at = _now()
    device.nonce = credentials.new_nonce()
    device.last_counter = 0
    # Forget the witness state of a previous key: the new key starts a new log.
    audit.append(
        session,
        "device.enrolled",
        actor=f"device:{device.serial}",
        organization_id=device.hospital_id,
        details={"serial": device.serial, "public_key": request.public_key},
    )
    return EnrollmentResponse(
        serial=device.serial,
        nonce=device.nonce,
        server_log_key=server_log_key,
        witness_key=witness_key,
        checkin_interval_seconds=checkin_interval_seconds,
    )


def current_nonce(session: Session, serial: str) -> tuple[str, str | None]:
    """The device's current nonce and the latest access-log checkpoint the server cosigned for it.

    Neither is secret: the nonce is useless without the device key, and the cosigned
    checkpoint lets a device that lost an answer learn which tree the witness last saw.
    """
    device = session.scalar(select(Device).where(Device.serial == serial))
    if device is None or device.nonce is None:
        raise NotFound("unknown_device", "no such enrolled device")
    identity = DeviceLogIdentity(device.id, device.enrolled_at or device.created_at)
    return device.nonce, latest_cosigned_note(session, identity)


@dataclass(frozen=True)
class _CheckinTarget:
    """The columns a check-in needs, read with one locked query (the hot path avoids ORM loading)."""

    id: int
    serial: str
    hospital_id: int
    status: str
    public_key: str | None
    last_counter: int
    nonce: str | None
    installed_version: str | None
    hardware_id: str
    since: datetime


@cache
def _checkin_statements() -> tuple[Any, Any, Any]:
    """Statements of the check-in hot path, built once (building them costs more than running them)."""
    lock = (
        select(
            Device.id,
            Device.serial,
            Device.hospital_id,
            Device.status,
            Device.public_key,
            Device.last_counter,
            Device.nonce,
            Device.installed_version,
            DeviceModel.hardware_id,
            Device.enrolled_at,
            Device.created_at,
        )
        .join(DeviceModel, DeviceModel.id == Device.model_id)
        .where(Device.serial == bindparam("b_serial"))
        # FOR NO KEY UPDATE: a check-in changes no key column, and this weaker lock does not
        # conflict with the key-share lock that inserting campaign rows referencing the device takes.
        .with_for_update(of=Device, key_share=True)
    )
    record = (
        update(Device)
        .where(Device.id == bindparam("b_id"))
        .values(
            installed_version=bindparam("b_version"),
            agent_state=bindparam("b_state"),
            last_seen_at=bindparam("b_seen"),
            last_counter=bindparam("b_counter"),
            nonce=bindparam("b_nonce"),
        )
    )
    return lock, record, insert(Checkin)


def _lock_checkin_target(session: Session, serial: str) -> _CheckinTarget | None:
    row = session.connection().execute(_checkin_statements()[0], {"b_serial": serial}).one_or_none()
    if row is None:
        return None
    return _CheckinTarget(
        id=row.id,
        serial=row.serial,
        hospital_id=row.hospital_id,
        status=row.status,
        public_key=row.public_key,
        last_counter=row.last_counter,
        nonce=row.nonce,
        installed_version=row.installed_version,
        hardware_id=row.hardware_id,
        since=row.enrolled_at or row.created_at,
    )


def checkin(
    session: Session,
    audit: ServerAuditLog,
    witness_for: Callable[[DeviceLogWitnessState], Witness],
    signed: SignedVersionReport,
    *,
    checkin_interval_seconds: int,
) -> CheckinResponse:
    """Verify and record a signed version report; refusals are specific and audited.

    ``signed`` comes from :meth:`SignedVersionReport.from_json`, the one parser of check-in bodies (the API
    runs it before the report reaches the writer thread), so only the signature is left to check here.
    """
    report, signature = signed.report, signed.signature
    serial = report.serial
    device = _lock_checkin_target(session, serial)
    if device is None:
        raise _refuse(
            NotFound("unknown_device", f"no device {serial!r}"), "device.checkin_refused", None, {"serial": serial}
        )
    details: dict[str, Any] = {"serial": serial}

    def refuse(error: ServiceError, event: str = "device.checkin_refused") -> AuditedRefusal:
        return _refuse(error, event, device, details)

    if device.status == DeviceStatus.RETIRED.value:
        raise refuse(PermissionDenied("device_retired", "this device is retired"))
    if device.status != DeviceStatus.ACTIVE.value or device.public_key is None:
        raise refuse(Conflict("device_not_enrolled", "this device has not enrolled"))
    device_key = VerifyKey.from_base64(device.public_key)
    try:
        report.verify_signature(signature, device_key)
    except SignatureError as e:
        raise refuse(
            AuthenticationFailed("bad_signature", "report signature does not verify with the device key")
        ) from e
    except ProtocolError as e:
        raise refuse(InvalidRequest("malformed_report", str(e))) from e
    details["counter"] = report.counter
    if report.hardware_id != device.hardware_id:
        raise refuse(InvalidRequest("hardware_id_mismatch", "report hardware id differs from the registered model"))
    if report.counter <= device.last_counter:
        if report.nonce != device.nonce:
            raise refuse(Conflict("replayed_report", "this report was already received"))
        raise refuse(Conflict("counter_not_increasing", "report counter is not above the last accepted one"))
    if report.nonce != device.nonce:
        raise refuse(Conflict("stale_nonce", "report does not carry the current nonce; fetch it and resend"))

    now = _now()
    cosigned: str | None = None
    if report.log_checkpoint:
        origin = device_log_origin(device.serial)
        state = DeviceLogWitnessState(session, {origin: DeviceLogIdentity(device.id, device.since)})
        vkey = vkey_string(origin, SIG_TYPE_ED25519, device_key.raw)
        try:
            proof = [_proof_hash(p) for p in report.log_consistency_proof]
            cosigned = witness_for(state).cosign(report.log_checkpoint, vkey, proof, int(now.timestamp()))
            state.remember_cosigned_note(origin, cosigned)
        except WitnessError as e:
            raise refuse(
                Conflict("log_fork_detected", f"device log checkpoint refused: {e}"), "device.log_fork_detected"
            ) from e
        except (AuditLogError, ValueError) as e:
            raise refuse(InvalidRequest("bad_log_checkpoint", f"device log checkpoint is invalid: {e}")) from e

    nonce = credentials.new_nonce()
    _lock, record, add_checkin = _checkin_statements()
    conn = session.connection()
    conn.execute(
        record,
        {
            "b_id": device.id,
            "b_version": report.installed_version,
            "b_state": report.agent_state,
            "b_seen": now,
            "b_counter": report.counter,
            "b_nonce": nonce,
        },
    )
    conn.execute(
        add_checkin,
        {
            "device_id": device.id,
            "counter": report.counter,
            "received_at": now,
            "installed_version": report.installed_version,
            "agent_state": report.agent_state,
            "report": canonical_json(report.to_json()).decode("utf-8"),
            "signature": signature,
        },
    )
    if report.update is not None:
        # Campaign progress comes only from here: a report verified with the device key (SM-1, SM-6).
        from medsec.server.services.update_campaigns import record_update_report

        record_update_report(
            session,
            audit,
            device_id=device.id,
            serial=device.serial,
            hospital_id=device.hospital_id,
            installed_version=report.installed_version,
            update=report.update,
            report_counter=report.counter,
            now=now,
        )
    # The audit head is locked last: campaign rows before it, as the background step does (no lock cycle).
    if device.installed_version != report.installed_version:
        audit.append(
            session,
            "device.version_changed",
            actor=f"device:{device.serial}",
            organization_id=device.hospital_id,
            details={"serial": device.serial, "from": device.installed_version, "to": report.installed_version},
        )
    return CheckinResponse(nonce=nonce, checkin_interval_seconds=checkin_interval_seconds, cosigned_checkpoint=cosigned)


def _proof_hash(value: str) -> bytes:
    raw = b64decode_field(value, "log_consistency_proof")
    if len(raw) != 32:
        raise ValueError("a consistency proof hash has 32 bytes")
    return raw


def list_checkins(session: Session, actor: Principal, serial: str, limit: int = 50) -> list[Checkin]:
    device = get_device(session, actor, serial)
    return list(
        session.scalars(
            select(Checkin).where(Checkin.device_id == device.id).order_by(Checkin.counter.desc()).limit(limit)
        )
    )


def list_log_checkpoints(session: Session, actor: Principal, serial: str, limit: int = 20) -> list[DeviceLogCheckpoint]:
    """Access-log checkpoints the server cosigned for a device the caller may see (newest first)."""
    device = get_device(session, actor, serial)
    return list(
        session.scalars(
            select(DeviceLogCheckpoint)
            .where(DeviceLogCheckpoint.device_id == device.id)
            .order_by(DeviceLogCheckpoint.size.desc(), DeviceLogCheckpoint.id.desc())
            .limit(limit)
        )
    )


def device_summary(device: Device) -> dict[str, Any]:
    return {
        "serial": device.serial,
        "model": device.model.name,
        "product": device.model.product,
        "hardware_id": device.model.hardware_id,
        "hospital": device.hospital.slug,
        "site": device.site.name if device.site else None,
        "status": device.status,
        "installed_version": device.installed_version,
        "agent_state": device.agent_state,
        "last_seen": device.last_seen_at.isoformat() if device.last_seen_at else None,
        "enrolled_at": device.enrolled_at.isoformat() if device.enrolled_at else None,
    }
