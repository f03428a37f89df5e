"""Remote-maintenance sessions on the server (RA-1, RA-3, RA-5): the database shell around
:mod:`medsec.remote.session`.

Every function loads the row, turns it into a :class:`MaintenanceSession`, lets the pure state
machine decide, writes the new value back and appends the transition's event to the audit log,
scoped to the device's hospital. Who may act:

* ``service_engineer`` (manufacturer) requests sessions, ends them, reports, fetches certificates;
* ``hospital_responsible`` approves, rejects, revokes and confirms, only for its own hospital's
  devices and never for a session it requested;
* ``manufacturer_admin`` and auditors see every session; hospitals see only their own.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
from sqlalchemy import Select, false, select
from sqlalchemy.orm import Session

from medsec.auditlog.export import ATTACHED_LOGS, build_export
from medsec.auditlog.note import SIG_TYPE_ED25519, vkey_string
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound, PermissionDenied, ServiceError
from medsec.remote.authority import grant_for
from medsec.remote.certs import MaintenanceCA, export_certificate
from medsec.remote.errors import AccessRefused, RecordingError, RemoteSessionError, SessionRequestInvalid
from medsec.remote.gateway import SessionGrant
from medsec.remote.maintenance_code import STEP_SECONDS, issue_code
from medsec.remote.recording import Playback, parse_playback, read_playback
from medsec.remote.report import (
    DeviceEntryFacts,
    DeviceLogFacts,
    ProofFacts,
    RecordingFacts,
    ServiceReportFacts,
    TimelineEntry,
    build_service_report,
)
from medsec.remote.session import (
    HARD_MAX_WINDOW,
    Approval,
    Capabilities,
    Confirmation,
    MaintenanceSession,
    Outcome,
    PortForward,
    SessionEvent,
    SessionId,
    SessionPolicy,
    SessionRequest,
    SessionState,
    WorkReport,
)
from medsec.remote.session import request_session as _request_session
from medsec.remote.session_log import DeviceLogError, LoggedEntry, SessionLogUpload, verify_entries
from medsec.remote.ticket import SessionTicket, issue_ticket
from medsec.server.audit import ServerAuditLog, SqlNodeReader
from medsec.server.models import AuditEntry, Device, DeviceLogCheckpoint, DeviceStatus, Role, User, UserRole
from medsec.server.models_remote import (
    RemoteApproval,
    RemoteDeviceEntry,
    RemoteDeviceUpload,
    RemotePolicy,
    RemoteRecording,
    RemoteSession,
)
from medsec.server.principal import Principal
from medsec.server.services.accounts import AuditedRefusal
from medsec.server.witness_state import ORIGIN_PREFIX, DeviceLogIdentity, latest_cosigned_note

logger = logging.getLogger(__name__)

SYSTEM = "system"
# Refusals that are about who is asking, not about the session's state.
_PERMISSION_CODES = frozenset({"self_approval", "not_an_approver", "not_the_engineer"})
OPEN_STATES = frozenset({SessionState.REQUESTED, SessionState.APPROVED, SessionState.ACTIVE})
WATCHED_STATES = (
    SessionState.REQUESTED.value,
    SessionState.APPROVED.value,
    SessionState.ACTIVE.value,
    SessionState.ENDED.value,
    SessionState.REPORTED.value,
)


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def _ts_opt(value: datetime | None) -> int | None:
    return None if value is None else _ts(value)


def _dt(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _dt_opt(value: int | None) -> datetime | None:
    return None if value is None else _dt(value)


# -- policy ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyView:
    approvers: tuple[str, ...]
    approvals_required: int
    max_window_minutes: int
    escalate_after_minutes: int
    emergency_allowed: bool


def approvers_of(db: Session, hospital_id: int) -> frozenset[str]:
    """M: the hospital's active responsible persons (医療機関等の責任者)."""
    stmt = (
        select(User.username)
        .join(UserRole, UserRole.user_id == User.id)
        .where(
            User.organization_id == hospital_id,
            User.is_active.is_(True),
            UserRole.role == Role.HOSPITAL_RESPONSIBLE.value,
        )
    )
    return frozenset(db.scalars(stmt))


def _policy_row(db: Session, hospital_id: int) -> RemotePolicy:
    row = db.scalar(select(RemotePolicy).where(RemotePolicy.hospital_id == hospital_id))
    return row if row is not None else RemotePolicy(hospital_id=hospital_id)


def _policy_defaults(row: RemotePolicy) -> tuple[int, int, int, bool]:
    return (
        row.approvals_required if row.approvals_required is not None else 1,
        row.max_window_minutes if row.max_window_minutes is not None else 240,
        row.escalate_after_minutes if row.escalate_after_minutes is not None else 24 * 60,
        row.emergency_allowed if row.emergency_allowed is not None else True,
    )


def get_policy(db: Session, actor: Principal, hospital_id: int) -> PolicyView:
    if not actor.can_see_org(hospital_id):
        raise NotFound("unknown_organization", "no such organisation is visible to you")
    required, window, escalate, emergency = _policy_defaults(_policy_row(db, hospital_id))
    return PolicyView(tuple(sorted(approvers_of(db, hospital_id))), required, window, escalate, emergency)


def set_policy(
    db: Session,
    audit: ServerAuditLog,
    actor: Principal,
    hospital_id: int,
    *,
    approvals_required: int,
    max_window_minutes: int,
    escalate_after_minutes: int,
    emergency_allowed: bool,
) -> PolicyView:
    """The hospital sets N of M and its limits; the window never exceeds 24 h whatever is asked."""
    if actor.is_manufacturer or actor.organization_id != hospital_id:
        raise NotFound("unknown_organization", "no such organisation is visible to you")
    actor.require_role(Role.HOSPITAL_ADMIN, Role.HOSPITAL_RESPONSIBLE)
    approvers = approvers_of(db, hospital_id)
    try:
        SessionPolicy(
            approvers=approvers or frozenset({"-"}),
            approvals_required=approvals_required,
            max_window=max_window_minutes * 60,
            escalate_after=escalate_after_minutes * 60,
            emergency_allowed=emergency_allowed,
        )
    except SessionRequestInvalid as e:
        raise InvalidRequest(e.code, str(e)) from e
    if approvals_required > max(len(approvers), 1):
        raise InvalidRequest("invalid_policy", f"{approvals_required} approvals but {len(approvers)} approvers")
    row = db.scalar(select(RemotePolicy).where(RemotePolicy.hospital_id == hospital_id))
    if row is None:
        row = RemotePolicy(hospital_id=hospital_id)
        db.add(row)
    row.approvals_required = approvals_required
    row.max_window_minutes = max_window_minutes
    row.escalate_after_minutes = escalate_after_minutes
    row.emergency_allowed = emergency_allowed
    row.updated_by = actor.username
    row.updated_at = datetime.now(UTC)
    db.flush()
    audit.append(
        db,
        "remote.policy_changed",
        actor=actor.username,
        organization_id=hospital_id,
        details={
            "approvals_required": approvals_required,
            "approvers": sorted(approvers),
            "max_window_minutes": max_window_minutes,
            "escalate_after_minutes": escalate_after_minutes,
            "emergency_allowed": emergency_allowed,
        },
    )
    return get_policy(db, actor, hospital_id)


# -- rows <-> values -----------------------------------------------------------------------------------


def _capabilities(data: dict[str, Any]) -> Capabilities:
    return Capabilities(
        shell=bool(data.get("shell")),
        file_transfer=bool(data.get("file_transfer")),
        ports=tuple(PortForward(str(p["name"]), int(p["port"])) for p in data.get("ports", [])),
    )


def _session_policy(db: Session, row: RemoteSession) -> SessionPolicy:
    _required, _window, _escalate, emergency = _policy_defaults(_policy_row(db, row.hospital_id))
    approvers = approvers_of(db, row.hospital_id)
    try:
        return SessionPolicy(
            approvers=approvers,
            approvals_required=row.approvals_required,
            max_window=HARD_MAX_WINDOW,
            escalate_after=row.escalate_after_minutes * 60,
            emergency_allowed=emergency,
        )
    except SessionRequestInvalid as e:
        raise Conflict("invalid_policy", f"the hospital's approval policy cannot be met: {e}") from e


def to_value(db: Session, row: RemoteSession) -> MaintenanceSession:
    request = SessionRequest(
        device_serial=row.device.serial,
        engineer=row.engineer,
        purpose=row.purpose,
        planned_work=row.planned_work,
        expected_impact=row.expected_impact,
        expected_downtime_minutes=row.expected_downtime_minutes,
        rollback=row.rollback,
        capabilities=_capabilities(row.capabilities),
        window_start=_ts(row.window_start),
        window_end=_ts(row.window_end),
        emergency=row.emergency,
    )
    report = None
    if row.work_done is not None:
        report = WorkReport(row.work_done, row.results or "", row.verification or "")
    confirmation = None
    if row.confirmed_by is not None and row.confirmed_at is not None and row.outcome is not None:
        confirmation = Confirmation(
            row.confirmed_by, _ts(row.confirmed_at), Outcome(row.outcome), row.confirmation_comment or ""
        )
    return MaintenanceSession(
        id=SessionId(row.id),
        request=request,
        policy=_session_policy(db, row),
        requested_at=_ts(row.requested_at),
        state=SessionState(row.state),
        approvals=tuple(Approval(a.approver, _ts(a.approved_at), a.comment) for a in row.approvals),
        rejected_by=row.rejected_by,
        started_at=_ts_opt(row.started_at),
        ended_at=_ts_opt(row.ended_at),
        end_reason=row.end_reason,
        revoked_by=row.revoked_by,
        report=report,
        reported_at=_ts_opt(row.reported_at),
        confirmation=confirmation,
        escalated_at=_ts_opt(row.escalated_at),
        emergency_overdue=row.emergency_overdue,
    )


def _store(row: RemoteSession, value: MaintenanceSession) -> None:
    row.state = value.state.value
    known = {a.approver for a in row.approvals}
    for a in value.approvals:
        if a.approver not in known:
            row.approvals.append(
                RemoteApproval(session_id=row.id, approver=a.approver, approved_at=_dt(a.at), comment=a.comment)
            )
    row.rejected_by = value.rejected_by
    row.started_at = _dt_opt(value.started_at)
    row.ended_at = _dt_opt(value.ended_at)
    row.end_reason = value.end_reason
    row.revoked_by = value.revoked_by
    if value.report is not None:
        row.work_done = value.report.work_done
        row.results = value.report.results
        row.verification = value.report.verification
    row.reported_at = _dt_opt(value.reported_at)
    if value.confirmation is not None:
        row.confirmed_by = value.confirmation.by
        row.confirmed_at = _dt(value.confirmation.at)
        row.outcome = value.confirmation.outcome.value
        row.confirmation_comment = value.confirmation.comment
    row.escalated_at = _dt_opt(value.escalated_at)
    row.emergency_overdue = value.emergency_overdue


def _record(db: Session, audit: ServerAuditLog, row: RemoteSession, event: SessionEvent) -> None:
    details = event.to_json()
    details["device"] = row.device.serial
    audit.append(db, f"remote.{event.kind}", actor=event.actor, organization_id=row.hospital_id, details=details)


def _translate(e: RemoteSessionError) -> ServiceError:
    if isinstance(e, SessionRequestInvalid):
        return InvalidRequest(e.code, str(e))
    if e.code in _PERMISSION_CODES:
        return PermissionDenied(e.code, str(e))
    return Conflict(e.code, str(e))


def _refusal(e: RemoteSessionError | ServiceError, actor: str, row: RemoteSession | None) -> AuditedRefusal:
    error = e if isinstance(e, ServiceError) else _translate(e)
    return AuditedRefusal(
        error,
        "remote.refused",
        actor=actor,
        organization_id=row.hospital_id if row is not None else None,
        details={"reason": error.code, "session": row.id if row is not None else None},
    )


def _transition(
    db: Session,
    audit: ServerAuditLog,
    row: RemoteSession,
    actor: str,
    step: Callable[[MaintenanceSession], tuple[MaintenanceSession, SessionEvent]],
) -> MaintenanceSession:
    value = to_value(db, row)
    try:
        new, event = step(value)
    except RemoteSessionError as e:
        raise _refusal(e, actor, row) from e
    _store(row, new)
    db.flush()
    _record(db, audit, row, event)
    return new


# -- visibility ----------------------------------------------------------------------------------------


def _scope(stmt: Select[RemoteSession], actor: Principal) -> Select[RemoteSession]:
    if not actor.is_manufacturer:
        return stmt.where(RemoteSession.hospital_id == actor.organization_id)
    if actor.has_role(Role.MANUFACTURER_ADMIN, Role.AUDITOR):
        return stmt
    if actor.has_role(Role.SERVICE_ENGINEER):
        return stmt.where(RemoteSession.engineer == actor.username)
    return stmt.where(false())


def get_session(db: Session, actor: Principal, session_id: str, *, for_update: bool = False) -> RemoteSession:
    stmt = _scope(select(RemoteSession).where(RemoteSession.id == session_id), actor)
    if for_update:
        stmt = stmt.with_for_update(of=RemoteSession)
    row = db.scalar(stmt)
    if row is None:
        raise NotFound("unknown_session", "no such maintenance session is visible to you")
    return row


def list_sessions(
    db: Session, actor: Principal, *, states: frozenset[str] | None = None, limit: int = 200
) -> list[RemoteSession]:
    stmt = _scope(select(RemoteSession), actor).order_by(RemoteSession.requested_at.desc()).limit(limit)
    if states:
        stmt = stmt.where(RemoteSession.state.in_(sorted(states)))
    return list(db.scalars(stmt))


def _require_hospital_responsible(actor: Principal, row: RemoteSession) -> None:
    if not actor.is_manufacturer and actor.organization_id != row.hospital_id:
        raise _refusal(
            NotFound("unknown_session", "no such maintenance session is visible to you"), actor.username, None
        )
    if actor.is_manufacturer or not actor.has_role(Role.HOSPITAL_RESPONSIBLE):
        raise _refusal(
            PermissionDenied("role_required", "this needs the hospital's responsible person"), actor.username, row
        )


def _require_engineer(actor: Principal) -> None:
    if not actor.is_manufacturer or not actor.has_role(Role.SERVICE_ENGINEER):
        raise PermissionDenied("role_required", "this needs a manufacturer service engineer")


# -- the workflow --------------------------------------------------------------------------------------


def request_session(
    db: Session,
    audit: ServerAuditLog,
    actor: Principal,
    *,
    serial: str,
    purpose: str,
    planned_work: str,
    expected_impact: str,
    expected_downtime_minutes: int,
    rollback: str,
    shell: bool,
    file_transfer: bool,
    ports: list[tuple[str, int]],
    window_start: int,
    window_end: int,
    emergency: bool,
    now: int,
) -> RemoteSession:
    """A service engineer asks for a session and explains the work before it starts (RA-5)."""
    _require_engineer(actor)
    device = db.scalar(select(Device).where(Device.serial == serial))
    if device is None:
        raise NotFound("unknown_device", "no such device is visible to you")
    required, max_window, escalate, emergency_ok = _policy_defaults(_policy_row(db, device.hospital_id))
    try:
        request = SessionRequest(
            device_serial=device.serial,
            engineer=actor.username,
            purpose=purpose,
            planned_work=planned_work,
            expected_impact=expected_impact,
            expected_downtime_minutes=expected_downtime_minutes,
            rollback=rollback,
            capabilities=Capabilities(
                shell=shell, file_transfer=file_transfer, ports=tuple(PortForward(n, p) for n, p in ports)
            ),
            window_start=window_start,
            window_end=window_end,
            emergency=emergency,
        )
        approvers = approvers_of(db, device.hospital_id)
        policy = SessionPolicy(
            approvers=approvers,
            approvals_required=required,
            max_window=max_window * 60,
            escalate_after=escalate * 60,
            emergency_allowed=emergency_ok,
        )
        value, event = _request_session(request, policy, now)
    except RemoteSessionError as e:
        error = _translate(e)
        if e.code == "invalid_policy":
            error = Conflict("invalid_policy", f"the hospital cannot approve sessions yet: {e}")
        raise AuditedRefusal(
            error,
            "remote.refused",
            actor=actor.username,
            organization_id=device.hospital_id,
            details={"reason": error.code, "device": device.serial},
        ) from e
    row = RemoteSession(
        id=value.id,
        device_id=device.id,
        hospital_id=device.hospital_id,
        engineer=actor.username,
        purpose=purpose,
        planned_work=planned_work,
        expected_impact=expected_impact,
        expected_downtime_minutes=expected_downtime_minutes,
        rollback=rollback,
        capabilities=request.capabilities.to_json(),
        window_start=_dt(window_start),
        window_end=_dt(window_end),
        emergency=emergency,
        approvals_required=required,
        escalate_after_minutes=escalate,
        state=value.state.value,
        requested_at=_dt(now),
        emergency_overdue=False,
    )
    db.add(row)
    db.flush()
    _record(db, audit, row, event)
    return row


def approve(
    db: Session, audit: ServerAuditLog, actor: Principal, session_id: str, *, comment: str, now: int
) -> RemoteSession:
    row = get_session(db, actor, session_id, for_update=True)
    _require_hospital_responsible(actor, row)
    _transition(db, audit, row, actor.username, lambda s: s.approve(actor.username, now, comment))
    return row


def reject(
    db: Session, audit: ServerAuditLog, actor: Principal, session_id: str, *, reason: str, now: int
) -> RemoteSession:
    row = get_session(db, actor, session_id, for_update=True)
    _require_hospital_responsible(actor, row)
    _transition(db, audit, row, actor.username, lambda s: s.reject(actor.username, now, reason))
    row.rejection_reason = reason
    return row


def revoke(
    db: Session, audit: ServerAuditLog, actor: Principal, session_id: str, *, reason: str, now: int
) -> RemoteSession:
    """The hospital (or the manufacturer's admin) stops a session; the gateway cuts it within 5 s (RA-1)."""
    row = get_session(db, actor, session_id, for_update=True)
    if not actor.has_role(Role.MANUFACTURER_ADMIN):
        _require_hospital_responsible(actor, row)
    _transition(db, audit, row, actor.username, lambda s: s.revoke(actor.username, now, reason))
    row.revoked_at = _dt(now)
    row.revocation_reason = reason
    return row


def end_session(
    db: Session, audit: ServerAuditLog, actor: Principal, session_id: str, *, now: int, reason: str = "completed"
) -> RemoteSession:
    row = get_session(db, actor, session_id, for_update=True)
    _require_engineer(actor)
    if row.engineer != actor.username:
        raise _refusal(PermissionDenied("not_the_engineer", "only the session's engineer ends it"), actor.username, row)
    _transition(db, audit, row, actor.username, lambda s: s.end(now, reason))
    return row


def submit_report(
    db: Session,
    audit: ServerAuditLog,
    actor: Principal,
    session_id: str,
    *,
    work_done: str,
    results: str,
    verification: str,
    now: int,
) -> RemoteSession:
    """The engineer explains the work after it (RA-5); an active session is ended first."""
    row = get_session(db, actor, session_id, for_update=True)
    _require_engineer(actor)
    try:
        report = WorkReport(work_done, results, verification)
    except SessionRequestInvalid as e:
        raise _refusal(e, actor.username, row) from e
    if row.state == SessionState.ACTIVE.value and row.engineer == actor.username:
        _transition(db, audit, row, actor.username, lambda s: s.end(now, "completed"))
    _transition(db, audit, row, actor.username, lambda s: s.submit_report(actor.username, now, report))
    return row


def confirm_end(
    db: Session,
    audit: ServerAuditLog,
    actor: Principal,
    session_id: str,
    *,
    outcome: str,
    comment: str,
    now: int,
) -> RemoteSession:
    """The hospital's responsible person confirms the end of the work, with identity and time (RA-3)."""
    row = get_session(db, actor, session_id, for_update=True)
    _require_hospital_responsible(actor, row)
    try:
        decision = Outcome(outcome)
    except ValueError as e:
        raise _refusal(
            InvalidRequest("invalid_outcome", "outcome is accepted, rejected or follow_up_needed"), actor.username, row
        ) from e
    _transition(db, audit, row, actor.username, lambda s: s.confirm_end(actor.username, now, decision, comment))
    return row


def issue_certificate(
    db: Session,
    audit: ServerAuditLog,
    actor: Principal,
    ca: MaintenanceCA,
    session_id: str,
    public_key: str,
    *,
    now: int,
) -> bytes:
    """A short-lived OpenSSH user certificate for exactly this approved session (RA-1)."""
    row = get_session(db, actor, session_id)
    _require_engineer(actor)
    if row.engineer != actor.username:
        raise _refusal(
            PermissionDenied("not_the_engineer", "only the session's engineer gets its certificate"),
            actor.username,
            row,
        )
    try:
        key = asyncssh.import_public_key(public_key.strip())
    except (asyncssh.KeyImportError, ValueError) as e:
        raise InvalidRequest("invalid_public_key", "send an OpenSSH public key line") from e
    value = to_value(db, row)
    try:
        grant_for(value, now)
        cert = ca.issue(value, key, now)
    except RemoteSessionError as e:
        raise _refusal(e, actor.username, row) from e
    audit.append(
        db,
        "remote.certificate_issued",
        actor=actor.username,
        organization_id=row.hospital_id,
        details={
            "session": row.id,
            "device": row.device.serial,
            "key_fingerprint": key.get_fingerprint("sha256"),
            "emergency": row.emergency,
        },
    )
    return export_certificate(cert)


def local_maintenance_code(
    db: Session,
    audit: ServerAuditLog,
    actor: Principal,
    approval_key: SigningKey,
    session_id: str,
    *,
    now: int,
) -> tuple[str, datetime]:
    """The one-time code for the device's local service console (PA-3), for the session's engineer
    while the session is approved and inside its window; returns the code and when it stops working."""
    row = get_session(db, actor, session_id)
    _require_engineer(actor)
    if row.engineer != actor.username:
        raise _refusal(
            PermissionDenied("not_the_engineer", "only the session's engineer gets its maintenance code"),
            actor.username,
            row,
        )
    try:
        grant_for(to_value(db, row), now)
    except RemoteSessionError as e:
        raise _refusal(e, actor.username, row) from e
    key = device_key(db, row.device.serial)
    if key is None:
        raise Conflict("device_not_enrolled", "the device has no enrolled key")
    code = issue_code(approval_key, key, row.device.serial, row.id, now)
    audit.append(
        db,
        "remote.local_code_issued",
        actor=actor.username,
        organization_id=row.hospital_id,
        details={"session": row.id, "device": row.device.serial, "step": now // STEP_SECONDS},
    )
    return code, _dt((now // STEP_SECONDS + 2) * STEP_SECONDS)


def check_overdue(db: Session, audit: ServerAuditLog, now: int) -> list[str]:
    """Escalate unconfirmed ends and late emergency approvals; end active sessions past their window."""
    touched: list[str] = []
    rows = db.scalars(
        select(RemoteSession).where(RemoteSession.state.in_(WATCHED_STATES)).with_for_update(of=RemoteSession)
    )
    for row in rows:
        try:
            value = to_value(db, row)
        except ServiceError:
            logger.warning("session %s cannot be checked: its hospital's policy cannot be met", row.id)
            continue
        events: list[SessionEvent] = []
        if value.state is SessionState.ACTIVE and now >= value.request.window_end:
            value, ended = value.end(now, "window_closed")
            events.append(ended)
        value, overdue = value.check_overdue(now)
        events += overdue
        if events:
            _store(row, value)
            db.flush()
            for event in events:
                _record(db, audit, row, event)
            touched.append(row.id)
    return touched


# -- what the gateway and the devices need -----------------------------------------------------------


def _row_for_system(db: Session, session_id: str) -> RemoteSession:
    row = db.get(RemoteSession, session_id)
    if row is None:
        raise AccessRefused("unknown_session", f"no session {session_id!r}")
    return row


def gateway_grant(db: Session, session_id: str, now: int) -> SessionGrant:
    row = _row_for_system(db, session_id)
    try:
        return grant_for(to_value(db, row), now)
    except ServiceError as e:
        raise AccessRefused(e.code, str(e)) from e


def gateway_ticket(
    db: Session, audit: ServerAuditLog, approval_key: SigningKey, session_id: str, now: int
) -> SessionTicket:
    """A fresh ticket for one engineer connection; the first connection starts the session."""
    row = db.scalar(select(RemoteSession).where(RemoteSession.id == session_id).with_for_update(of=RemoteSession))
    if row is None:
        raise AccessRefused("unknown_session", f"no session {session_id!r}")
    value = to_value(db, row)
    grant_for(value, now)
    if value.state is not SessionState.ACTIVE:
        value, event = value.start(now)
        _store(row, value)
        db.flush()
        _record(db, audit, row, event)
    ticket = issue_ticket(value, approval_key)
    audit.append(
        db,
        "remote.ticket_issued",
        actor=SYSTEM,
        organization_id=row.hospital_id,
        details={"session": row.id, "device": row.device.serial, "nonce": ticket.unverified_claims().nonce},
    )
    return ticket


def device_key(db: Session, serial: str) -> VerifyKey | None:
    device = db.scalar(select(Device).where(Device.serial == serial))
    if device is None or device.status != DeviceStatus.ACTIVE.value or device.public_key is None:
        return None
    return VerifyKey.from_base64(device.public_key)


def recording_sealed(db: Session, audit: ServerAuditLog, session_id: str, path: Path, sha256: str) -> int:
    """The recording's hash goes into the audit log, so a changed recording is detected later."""
    row = db.get(RemoteSession, session_id)
    if row is None:
        raise NotFound("unknown_session", f"no session {session_id!r}")
    index = audit.append(
        db,
        "remote.recording_sealed",
        actor=SYSTEM,
        organization_id=row.hospital_id,
        details={"session": row.id, "device": row.device.serial, "sha256": sha256, "file": path.name},
        write_now=True,  # the recording row cites the entry's index
    )
    db.add(RemoteRecording(session_id=row.id, path=str(path), sha256=sha256, audit_index=index))
    db.flush()
    return index


def pending_for_device(db: Session, serial: str, now: int) -> list[str]:
    """Sessions of this device the gateway may open now: the device should attach to the gateway."""
    stmt = (
        select(RemoteSession)
        .join(Device, Device.id == RemoteSession.device_id)
        .where(Device.serial == serial, RemoteSession.state.in_([s.value for s in OPEN_STATES]))
    )
    pending: list[str] = []
    for row in db.scalars(stmt):
        try:
            grant_for(to_value(db, row), now)
        except (RemoteSessionError, ServiceError):
            continue
        pending.append(row.id)
    return pending


def session_summary(row: RemoteSession) -> dict[str, Any]:
    return {
        "id": row.id,
        "device": row.device.serial,
        "hospital": row.device.hospital.slug,
        "engineer": row.engineer,
        "state": row.state,
        "emergency": row.emergency,
        "emergency_overdue": row.emergency_overdue,
        "purpose": row.purpose,
        "planned_work": row.planned_work,
        "expected_impact": row.expected_impact,
        "expected_downtime_minutes": row.expected_downtime_minutes,
        "rollback": row.rollback,
        "capabilities": row.capabilities,
        "window_start": row.window_start,
        "window_end": row.window_end,
        "requested_at": row.requested_at,
        "approvals_required": row.approvals_required,
        "approvals": [{"approver": a.approver, "at": a.approved_at, "comment": a.comment} for a in row.approvals],
        "rejected_by": row.rejected_by,
        "rejection_reason": row.rejection_reason,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "end_reason": row.end_reason,
        "revoked_by": row.revoked_by,
        "revoked_at": row.revoked_at,
        "revocation_reason": row.revocation_reason,
        "report": (
            {"work_done": row.work_done, "results": row.results, "verification": row.verification}
            if row.work_done is not None
            else None
        ),
        "reported_at": row.reported_at,
        "confirmation": (
            {
                "by": row.confirmed_by,
                "at": row.confirmed_at,
                "outcome": row.outcome,
                "comment": row.confirmation_comment,
            }
            if row.confirmed_by is not None
            else None
        ),
        "escalated_at": row.escalated_at,
        "recordings": [
            {"id": r.id, "sha256": r.sha256, "audit_index": r.audit_index, "at": r.sealed_at} for r in row.recordings
        ],
    }


# -- the device's own access-log entries of a session (RA-2, RA-5) -------------------------------------

DEVICE_UPLOAD_SKEW = 300  # seconds between the device's clock and ours, as for director requests
DEVICE_LOG_RECEIVED = "remote.device_log_received"


@dataclass(frozen=True)
class DeviceLogReceipt:
    session: str
    checkpoint_size: int
    stored: int


def _log_identity(device: Device) -> DeviceLogIdentity:
    """A re-enrolled device starts a new log: only checkpoints cosigned since then count."""
    return DeviceLogIdentity(device.id, device.enrolled_at or device.created_at)


def latest_cosigned_checkpoint(db: Session, device: Device) -> str | None:
    """The newest checkpoint of the device's access log that the server cosigned (what it proves against)."""
    return latest_cosigned_note(db, _log_identity(device))


def _cosigned_checkpoint(db: Session, device: Device, size: int) -> DeviceLogCheckpoint | None:
    since = _log_identity(device).since
    return db.scalar(
        select(DeviceLogCheckpoint)
        .where(
            DeviceLogCheckpoint.device_id == device.id,
            DeviceLogCheckpoint.size == size,
            DeviceLogCheckpoint.received_at >= since,
            DeviceLogCheckpoint.note != "",
        )
        .order_by(DeviceLogCheckpoint.id.desc())
        .limit(1)
    )


def _active_device(db: Session, serial: str) -> Device:
    device = db.scalar(select(Device).where(Device.serial == serial))
    if device is None or device.public_key is None or device.status != DeviceStatus.ACTIVE.value:
        raise NotFound("not_found", "Not Found")  # as for every device-signed request: nothing to learn here
    return device


def receive_device_entries(
    db: Session, audit: ServerAuditLog, serial: str, body: Any, signature: Any, now: int
) -> DeviceLogReceipt:
    """Check and keep the device's signed upload of a session's access-log entries.

    Each entry must name the session, the session must be this device's, and each inclusion proof
    must lead to the root of a checkpoint *this server cosigned* for this device. Entries the
    server already holds are kept once; an upload bringing nothing new is a replay. Every refusal
    is written to the audit log (``remote.device_log_refused`` with its code).
    """
    device = _active_device(db, serial)
    claimed = body.get("session") if isinstance(body, dict) else None
    details: dict[str, Any] = {"device": serial, "session": claimed if isinstance(claimed, str) else None}

    def refuse(err: ServiceError) -> AuditedRefusal:
        return AuditedRefusal(
            err,
            "remote.device_log_refused",
            actor=f"device:{serial}",
            organization_id=device.hospital_id,
            details=details,
        )

    key = VerifyKey.from_base64(str(device.public_key))
    try:
        upload = SessionLogUpload.verify(body, signature, key)
    except DeviceLogError as e:
        failure = AuthenticationFailed if e.code == "bad_signature" else InvalidRequest
        raise refuse(failure(e.code, str(e))) from e
    details["checkpoint_size"] = upload.checkpoint_size
    if upload.serial != serial:
        raise refuse(InvalidRequest("serial_mismatch", f"the upload names device {upload.serial!r}"))
    if abs(now - upload.sent_at) > DEVICE_UPLOAD_SKEW:
        raise refuse(Conflict("stale_upload", "the upload's time is too far from the server's clock"))
    row = db.scalar(select(RemoteSession).where(RemoteSession.id == upload.session).with_for_update(of=RemoteSession))
    if row is None:
        raise refuse(NotFound("unknown_session", f"no session {upload.session!r}"))
    if row.device_id != device.id:
        raise refuse(PermissionDenied("session_not_for_device", f"session {row.id} is not a session of {serial}"))
    checkpoint = _cosigned_checkpoint(db, device, upload.checkpoint_size)
    if checkpoint is None:
        raise refuse(
            Conflict("unknown_checkpoint", f"this server never cosigned a checkpoint of size {upload.checkpoint_size}")
        )
    root = base64.b64decode(checkpoint.root_hash)
    try:
        verify_entries(upload.entries, row.id, upload.checkpoint_size, root)
    except DeviceLogError as e:
        raise refuse(InvalidRequest(e.code, str(e))) from e
    new = _new_entries(db, row.id, upload, refuse)
    origin = f"{ORIGIN_PREFIX}{serial}"
    log_key = vkey_string(origin, SIG_TYPE_ED25519, key.raw)
    audit.append(
        db,
        DEVICE_LOG_RECEIVED,
        actor=f"device:{serial}",
        organization_id=row.hospital_id,
        details={
            "session": row.id,
            "device": serial,
            "log_origin": origin,
            "log_key": log_key,
            "checkpoint_size": upload.checkpoint_size,
            "root_hash": root.hex(),
            "entries": len(new),
            "first_index": new[0].index,
            "last_index": new[-1].index,
        },
    )
    stored = RemoteDeviceUpload(
        session_id=row.id,
        device_id=device.id,
        log_origin=origin,
        log_key=log_key,
        checkpoint_size=upload.checkpoint_size,
        root_hash=root.hex(),
        checkpoint_note=checkpoint.note,
    )
    db.add(stored)
    db.flush()
    for item in new:
        db.add(
            RemoteDeviceEntry(
                session_id=row.id,
                upload_id=stored.id,
                log_index=item.index,
                event=item.event[:64],
                entry=item.leaf.decode("utf-8"),
                inclusion_proof=[base64.b64encode(h).decode("ascii") for h in item.inclusion_proof],
            )
        )
    db.flush()
    return DeviceLogReceipt(row.id, upload.checkpoint_size, len(new))


def _new_entries(
    db: Session, session_id: str, upload: SessionLogUpload, refuse: Callable[[ServiceError], AuditedRefusal]
) -> list[LoggedEntry]:
    """The upload's entries the server does not hold yet; the same index with other bytes is a conflict."""
    held = dict(
        db.execute(
            select(RemoteDeviceEntry.log_index, RemoteDeviceEntry.entry).where(
                RemoteDeviceEntry.session_id == session_id,
                RemoteDeviceEntry.log_index.in_([e.index for e in upload.entries]),
            )
        ).all()
    )
    new = []
    for e in upload.entries:
        if e.index not in held:
            new.append(e)
        elif held[e.index] != e.leaf.decode("utf-8"):
            raise refuse(Conflict("entry_conflict", f"entry {e.index} differs from the one already kept"))
    if not new:
        raise refuse(Conflict("replayed_upload", "every entry of this upload is already kept"))
    return new


def _device_entries(db: Session, session_id: str) -> list[RemoteDeviceEntry]:
    return list(
        db.scalars(
            select(RemoteDeviceEntry)
            .where(RemoteDeviceEntry.session_id == session_id)
            .order_by(RemoteDeviceEntry.log_index)
        )
    )


def _attached_logs(row: RemoteSession, entries: Sequence[RemoteDeviceEntry]) -> list[dict[str, Any]]:
    """The device-log part of the proof bundle: one attached log per device log key (see auditlog.export)."""
    uploads = {u.id: u for u in row.device_uploads}
    logs: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        up = uploads[e.upload_id]
        log = logs.setdefault(
            (up.log_origin, up.log_key),
            {"origin": up.log_origin, "log_key": up.log_key, "match": {"session": row.id}, "checkpoints": [],
             "entries": []},
        )  # fmt: skip
        if up.checkpoint_note not in log["checkpoints"]:
            log["checkpoints"].append(up.checkpoint_note)
        log["entries"].append(
            {
                "index": e.log_index,
                "entry": json.loads(e.entry),
                "inclusion_proof": list(e.inclusion_proof),
                "checkpoint_size": up.checkpoint_size,
            }
        )
    return list(logs.values())


def _device_log_facts(row: RemoteSession, entries: Sequence[RemoteDeviceEntry]) -> DeviceLogFacts | None:
    if not entries:
        return None
    uploads = {u.id: u for u in row.device_uploads}
    facts = []
    for e in entries:
        value = json.loads(e.entry)
        at = value.get("at")
        facts.append(
            DeviceEntryFacts(
                index=e.log_index,
                at=_dt(at) if isinstance(at, int) and not isinstance(at, bool) else None,
                event=e.event,
                fields={k: v for k, v in value.items() if k not in ("event", "at", "session")},
                checkpoint_size=uploads[e.upload_id].checkpoint_size,
            )
        )
    return DeviceLogFacts(origin=row.device_uploads[0].log_origin, entries=tuple(facts))


# -- recordings: playback and download (every one logged) ----------------------------------------------

RECORDING_VIEW_MODES = frozenset({"playback", "download"})


@dataclass(frozen=True)
class RecordingView:
    """A recording that passed its seal and audit-log hash check, ready to show or to send."""

    id: int
    session_id: str
    sha256: str
    audit_index: int
    playback: Playback
    data: bytes


def _recording_row(
    db: Session, actor: Principal, session_id: str, recording_id: int
) -> tuple[RemoteSession, RemoteRecording]:
    """The recording if its session is visible; anything else (another hospital's too) is simply unknown."""
    missing = NotFound("unknown_recording", "no such recording is visible to you")
    try:
        row = get_session(db, actor, session_id)
    except NotFound as e:
        raise missing from e
    rec = next((r for r in row.recordings if r.id == recording_id), None)
    if rec is None:
        raise missing
    return row, rec


def view_recording(
    db: Session, audit: ServerAuditLog, actor: Principal, session_id: str, recording_id: int, *, mode: str
) -> RecordingView:
    """Check the recording against the hash sealed in the audit log, log the view, return it.

    A recording whose bytes no longer match is never returned: the refusal (``recording_tampered``
    and friends) is logged as a failed view even though the request's transaction rolls back.
    """
    if mode not in RECORDING_VIEW_MODES:
        raise InvalidRequest("invalid_mode", "a recording is viewed for playback or download")
    session, rec = _recording_row(db, actor, session_id, recording_id)
    details: dict[str, Any] = {
        "session": session.id,
        "device": session.device.serial,
        "recording": rec.id,
        "sha256": rec.sha256,
        "mode": mode,
    }
    try:
        data = Path(rec.path).read_bytes()
        playback = parse_playback(data, rec.sha256)
    except (RecordingError, OSError) as e:
        code = e.code if isinstance(e, RecordingError) else "recording_unreadable"
        logger.warning("recording %s of %s failed its check: %s", rec.id, session.id, code)
        raise AuditedRefusal(
            Conflict(code, f"the recording does not match the SHA-256 sealed in the audit log: {e}"),
            "remote.recording_viewed",
            actor=actor.username,
            organization_id=session.hospital_id,
            details={**details, "verified": False, "problem": code},
        ) from e
    audit.append(
        db,
        "remote.recording_viewed",
        actor=actor.username,
        organization_id=session.hospital_id,
        details={**details, "verified": True},
    )
    return RecordingView(rec.id, session.id, rec.sha256, rec.audit_index, playback, data)


# -- the service report and its proof bundle (RA-5, RA-3) -------------------------------------------------

REPORT_FORMATS = frozenset({"html", "pdf", "bundle"})
_DETAIL_KEYS = (
    "comment",
    "reason",
    "outcome",
    "sha256",
    "key_fingerprint",
    "mode",
    "problem",
    "format",
    "code",
    "checkpoint_size",
    "entries",
)


def _session_entries(db: Session, row: RemoteSession, below: int) -> list[tuple[int, bytes, dict[str, Any]]]:
    """The session's own audit entries (index, leaf bytes, parsed body), oldest first."""
    stmt = (
        select(AuditEntry.idx, AuditEntry.body)
        .where(
            AuditEntry.organization_id == row.hospital_id,
            AuditEntry.event_type.like("remote.%"),
            AuditEntry.idx < below,
        )
        .order_by(AuditEntry.idx)
    )
    out: list[tuple[int, bytes, dict[str, Any]]] = []
    for idx, body in db.execute(stmt):
        entry = json.loads(body)
        if entry.get("details", {}).get("session") == row.id:
            out.append((idx, body, entry))
    return out


def _timeline_entry(idx: int, entry: dict[str, Any]) -> TimelineEntry:
    details = entry.get("details", {})
    detail = "; ".join(f"{k}: {details[k]}" for k in _DETAIL_KEYS if details.get(k) not in (None, ""))
    at = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return TimelineEntry(idx, at, str(entry["type"]), str(entry.get("actor") or "—"), detail[:500])


def _recording_facts(rec: RemoteRecording) -> RecordingFacts:
    try:
        playback = read_playback(Path(rec.path), rec.sha256)
    except RecordingError as e:
        return RecordingFacts(rec.sha256, rec.audit_index, rec.sealed_at, e.code)
    return RecordingFacts(
        rec.sha256,
        rec.audit_index,
        rec.sealed_at,
        "verified",
        commands=tuple((line.at, line.text) for line in playback.lines if line.kind == "input" and line.text.strip()),
        transfers=tuple(
            (line.at, line.text) for line in playback.lines if line.kind == "marker" and line.text.startswith("file ")
        ),
    )


@dataclass(frozen=True)
class ServiceReport:
    facts: ServiceReportFacts
    bundle: dict[str, Any]


def service_report(
    db: Session, audit: ServerAuditLog, actor: Principal, session_id: str, *, fmt: str, lang: str
) -> ServiceReport:
    """Gather the report's facts and its proof bundle; the download itself is logged first, so it is in the proof.

    The bundle is a plain ``medsec-auditlog-export/v1`` document (what ``medsec audit verify`` checks)
    of the session's entries against a fresh signed checkpoint, with a ``service_report`` member
    naming the session and its recording hashes, and, once the device has sent them, an
    ``attached_logs`` member: the device's own entries of the session with their inclusion proofs
    and the device checkpoints this server cosigned, vouched for by the session's
    ``remote.device_log_received`` entries.
    """
    if fmt not in REPORT_FORMATS or lang not in ("en", "ja"):
        raise InvalidRequest("invalid_report_format", "format is html, pdf or bundle; language is ja or en")
    row = get_session(db, actor, session_id)
    audit.append(
        db,
        "remote.report_downloaded",
        actor=actor.username,
        organization_id=row.hospital_id,
        details={"session": row.id, "device": row.device.serial, "format": fmt, "lang": lang},
    )
    cp = audit.checkpoint(db)
    entries = _session_entries(db, row, cp.size)
    bundle = build_export(
        origin=audit.origin,
        log_vkey=audit.vkey,
        checkpoint_note=cp.note,
        entries=[(idx, body) for idx, body, _ in entries],
        reader=SqlNodeReader(db),
    )
    bundle["service_report"] = {
        "session": row.id,
        "device": row.device.serial,
        "hospital": row.device.hospital.slug,
        "recordings": [{"sha256": r.sha256, "audit_index": r.audit_index} for r in row.recordings],
    }
    device_entries = _device_entries(db, row.id)
    if device_entries:
        bundle[ATTACHED_LOGS] = _attached_logs(row, device_entries)
    facts = ServiceReportFacts(
        session_id=row.id,
        device=row.device.serial,
        hospital=row.device.hospital.name,
        engineer=row.engineer,
        state=row.state,
        emergency=row.emergency,
        purpose=row.purpose,
        planned_work=row.planned_work,
        expected_impact=row.expected_impact,
        expected_downtime_minutes=row.expected_downtime_minutes,
        rollback=row.rollback,
        shell=bool(row.capabilities.get("shell")),
        file_transfer=bool(row.capabilities.get("file_transfer")),
        ports=tuple((str(p["name"]), int(p["port"])) for p in row.capabilities.get("ports", [])),
        window_start=row.window_start,
        window_end=row.window_end,
        requested_at=row.requested_at,
        approvals_required=row.approvals_required,
        approvals=tuple((a.approver, a.approved_at, a.comment) for a in row.approvals),
        timeline=tuple(_timeline_entry(idx, entry) for idx, _, entry in entries),
        recordings=tuple(_recording_facts(r) for r in row.recordings),
        work_done=row.work_done,
        results=row.results,
        verification=row.verification,
        reported_at=row.reported_at,
        confirmed_by=row.confirmed_by,
        confirmed_at=row.confirmed_at,
        outcome=row.outcome,
        confirmation_comment=row.confirmation_comment,
        proof=ProofFacts(audit.origin, cp.size, cp.root_hash.hex(), audit.vkey, len(entries)),
        generated_at=datetime.now(UTC),
        device_log=_device_log_facts(row, device_entries),
    )
    return ServiceReport(facts, bundle)


def report_file(report: ServiceReport, fmt: str, lang: str) -> tuple[bytes, str, str]:
    """The download: ``(bytes, media type, file name)`` for html, pdf or the proof bundle."""
    from medsec.reports.html import render_html
    from medsec.reports.pdf import render_pdf

    base = f"service-report-{report.facts.session_id}"
    if fmt == "bundle":
        data = json.dumps(report.bundle, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
        return data, "application/json", f"{base}-proof.json"
    doc = build_service_report(report.facts, lang)
    if fmt == "pdf":
        return render_pdf(doc), "application/pdf", f"{base}.{lang}.pdf"
    return render_html(doc).encode("utf-8"), "text/html; charset=utf-8", f"{base}.{lang}.html"
