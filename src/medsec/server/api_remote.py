"""JSON API of remote maintenance under ``/api/v1/remote``. Routes parse, call a service, render."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from medsec.errors import NotFound
from medsec.protocol import DEVICE_SIGNATURE_HEADER, DEVICE_TIME_HEADER
from medsec.server.api import ERRORS, Caller, Ctx, RowId, Str100, Strict
from medsec.server.models import Device
from medsec.server.remote_authority import load_remote_keys
from medsec.server.services import accounts
from medsec.server.services import remote_sessions as remote
from medsec.server.services.updates import verify_device_request

router = APIRouter(prefix="/api/v1/remote", tags=["remote maintenance"])

Text = Annotated[str, Field(min_length=1, max_length=4000)]
Comment = Annotated[str, Field(max_length=4000)]
SessionIdPath = Annotated[str, Field(max_length=80)]


def _now() -> int:
    return int(time.time())


class PortIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    port: Annotated[int, Field(ge=1, le=65535)]


class SessionRequestIn(Strict):
    device: Str100
    purpose: Text
    planned_work: Text
    expected_impact: Text
    expected_downtime_minutes: Annotated[int, Field(ge=0, le=24 * 60)]
    rollback: Text
    shell: bool = True
    file_transfer: bool = False
    ports: Annotated[list[PortIn], Field(default_factory=list, max_length=16)]
    window_start: datetime | None = None  # default: now
    window_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 240
    emergency: bool = False


class ApprovalOut(BaseModel):
    approver: str
    at: datetime
    comment: str


class RecordingOut(BaseModel):
    id: int
    sha256: str
    audit_index: int
    at: datetime


class SessionOut(BaseModel):
    id: str
    device: str
    hospital: str
    engineer: str
    state: str
    emergency: bool
    emergency_overdue: bool
    purpose: str
    planned_work: str
    expected_impact: str
    expected_downtime_minutes: int
    rollback: str
    capabilities: dict[str, Any]
    window_start: datetime
    window_end: datetime
    requested_at: datetime
    approvals_required: int
    approvals: list[ApprovalOut]
    rejected_by: str | None
    rejection_reason: str | None
    started_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    revoked_by: str | None
    revoked_at: datetime | None
    revocation_reason: str | None
    report: dict[str, Any] | None
    reported_at: datetime | None
    confirmation: dict[str, Any] | None
    escalated_at: datetime | None
    recordings: list[RecordingOut]


def _out(row: Any) -> SessionOut:
    return SessionOut(**remote.session_summary(row))


@router.post("/sessions", response_model=SessionOut, status_code=201, responses=ERRORS)
def request_session(body: SessionRequestIn, ctx: Ctx, caller: Caller) -> SessionOut:
    now = _now()
    start = int(body.window_start.timestamp()) if body.window_start else now
    with ctx.tx() as db:
        row = remote.request_session(
            db,
            ctx.audit,
            caller,
            serial=body.device,
            purpose=body.purpose,
            planned_work=body.planned_work,
            expected_impact=body.expected_impact,
            expected_downtime_minutes=body.expected_downtime_minutes,
            rollback=body.rollback,
            shell=body.shell,
            file_transfer=body.file_transfer,
            ports=[(p.name, p.port) for p in body.ports],
            window_start=start,
            window_end=start + body.window_minutes * 60,
            emergency=body.emergency,
            now=now,
        )
        return _out(row)


@router.get("/sessions", response_model=list[SessionOut], responses=ERRORS)
def list_sessions(
    ctx: Ctx,
    caller: Caller,
    state: Annotated[list[str] | None, Query(max_length=8)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[SessionOut]:
    with ctx.tx() as db:
        rows = remote.list_sessions(db, caller, states=frozenset(state) if state else None, limit=limit)
        return [_out(r) for r in rows]


@router.get("/sessions/{session_id}", response_model=SessionOut, responses=ERRORS)
def show_session(session_id: SessionIdPath, ctx: Ctx, caller: Caller) -> SessionOut:
    with ctx.tx() as db:
        return _out(remote.get_session(db, caller, session_id))


class CommentIn(Strict):
    comment: Comment = ""


class ReasonIn(Strict):
    reason: Text


class ReportIn(Strict):
    work_done: Text
    results: Text
    verification: Text


class ConfirmIn(Strict):
    outcome: Annotated[str, Field(min_length=1, max_length=32)]
    comment: Comment = ""


@router.post("/sessions/{session_id}/approve", response_model=SessionOut, responses=ERRORS)
def approve(session_id: SessionIdPath, body: CommentIn, ctx: Ctx, caller: Caller) -> SessionOut:
    with ctx.tx() as db:
        return _out(remote.approve(db, ctx.audit, caller, session_id, comment=body.comment, now=_now()))


@router.post("/sessions/{session_id}/reject", response_model=SessionOut, responses=ERRORS)
def reject(session_id: SessionIdPath, body: ReasonIn, ctx: Ctx, caller: Caller) -> SessionOut:
    with ctx.tx() as db:
        return _out(remote.reject(db, ctx.audit, caller, session_id, reason=body.reason, now=_now()))


@router.post("/sessions/{session_id}/revoke", response_model=SessionOut, responses=ERRORS)
def revoke(session_id: SessionIdPath, body: ReasonIn, ctx: Ctx, caller: Caller) -> SessionOut:
    with ctx.tx() as db:
        return _out(remote.revoke(db, ctx.audit, caller, session_id, reason=body.reason, now=_now()))


@router.post("/sessions/{session_id}/end", response_model=SessionOut, responses=ERRORS)
def end(session_id: SessionIdPath, ctx: Ctx, caller: Caller) -> SessionOut:
    with ctx.tx() as db:
        return _out(remote.end_session(db, ctx.audit, caller, session_id, now=_now()))


@router.post("/sessions/{session_id}/report", response_model=SessionOut, responses=ERRORS)
def report(session_id: SessionIdPath, body: ReportIn, ctx: Ctx, caller: Caller) -> SessionOut:
    with ctx.tx() as db:
        row = remote.submit_report(
            db,
            ctx.audit,
            caller,
            session_id,
            work_done=body.work_done,
            results=body.results,
            verification=body.verification,
            now=_now(),
        )
        return _out(row)


@router.post("/sessions/{session_id}/confirm", response_model=SessionOut, responses=ERRORS)
def confirm(session_id: SessionIdPath, body: ConfirmIn, ctx: Ctx, caller: Caller) -> SessionOut:
    with ctx.tx() as db:
        row = remote.confirm_end(
            db, ctx.audit, caller, session_id, outcome=body.outcome, comment=body.comment, now=_now()
        )
        return _out(row)


class CertificateIn(Strict):
    public_key: Annotated[str, Field(min_length=20, max_length=16384)]


@router.post(
    "/sessions/{session_id}/certificate",
    response_class=PlainTextResponse,
    responses=ERRORS,
    summary="An OpenSSH user certificate (-cert.pub) for this approved session",
)
def certificate(session_id: SessionIdPath, body: CertificateIn, ctx: Ctx, caller: Caller) -> PlainTextResponse:
    keys = load_remote_keys(ctx.settings)
    with ctx.tx() as db:
        cert = remote.issue_certificate(db, ctx.audit, caller, keys.ca, session_id, body.public_key, now=_now())
    return PlainTextResponse(cert.decode("ascii"), headers={"Cache-Control": "no-store"})


class PolicyIn(Strict):
    approvals_required: Annotated[int, Field(ge=1, le=20)]
    max_window_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 240
    escalate_after_minutes: Annotated[int, Field(ge=1, le=30 * 24 * 60)] = 24 * 60
    emergency_allowed: bool = True


class PolicyOut(BaseModel):
    hospital: str
    approvers: list[str]
    approvals_required: int
    max_window_minutes: int
    escalate_after_minutes: int
    emergency_allowed: bool


@router.get("/policies/{hospital}", response_model=PolicyOut, responses=ERRORS)
def get_policy(hospital: Annotated[str, Field(min_length=2, max_length=64)], ctx: Ctx, caller: Caller) -> PolicyOut:
    with ctx.tx() as db:
        org = accounts.get_organization(db, caller, hospital)
        view = remote.get_policy(db, caller, org.id)
        return PolicyOut(hospital=org.slug, **{**view.__dict__, "approvers": list(view.approvers)})


@router.put("/policies/{hospital}", response_model=PolicyOut, responses=ERRORS)
def put_policy(
    hospital: Annotated[str, Field(min_length=2, max_length=64)], body: PolicyIn, ctx: Ctx, caller: Caller
) -> PolicyOut:
    with ctx.tx() as db:
        org = accounts.get_organization(db, caller, hospital)
        view = remote.set_policy(db, ctx.audit, caller, org.id, **body.model_dump())
        return PolicyOut(hospital=org.slug, **{**view.__dict__, "approvers": list(view.approvers)})


class PendingOut(BaseModel):
    sessions: list[str]
    approval_key: str
    cosigned_checkpoint: str | None = None  # the newest device-log checkpoint the server cosigned


@router.get("/devices/{serial}/pending", response_model=PendingOut, responses=ERRORS)
def device_pending(serial: Str100, request: Request, ctx: Ctx) -> PendingOut:
    """For the device itself (signed request headers): should it attach to the gateway now?"""
    keys = load_remote_keys(ctx.settings)
    with ctx.tx() as db:
        device = db.scalar(select(Device).where(Device.serial == serial))
        if device is None:
            raise NotFound("not_found", "Not Found")
        verify_device_request(
            device,
            request.url.path,
            request.headers.get(DEVICE_TIME_HEADER),
            request.headers.get(DEVICE_SIGNATURE_HEADER),
            datetime.now(UTC),
        )
        pending = remote.pending_for_device(db, serial, _now())
        cosigned = remote.latest_cosigned_checkpoint(db, device)
    return PendingOut(sessions=pending, approval_key=keys.approval_verify_key.to_base64(), cosigned_checkpoint=cosigned)


class DeviceLogUploadIn(Strict):
    upload: dict[str, Any]  # parsed strictly by medsec.remote.session_log
    signature: Annotated[str, Field(max_length=200)]


class DeviceLogReceiptOut(BaseModel):
    session: str
    checkpoint_size: int
    stored: int


@router.post("/devices/{serial}/log-entries", response_model=DeviceLogReceiptOut, responses=ERRORS)
def device_log_entries(serial: Str100, body: DeviceLogUploadIn, ctx: Ctx) -> DeviceLogReceiptOut:
    """For the device itself (signed body): its access-log entries of a session, with inclusion proofs
    against a checkpoint this server cosigned (RA-2). Refusals name the reason (``bad_inclusion_proof``,
    ``unknown_checkpoint``, ``entry_not_for_session``, ``session_not_for_device``, ``bad_signature``,
    ``replayed_upload``, ...) and are written to the audit log."""
    with ctx.tx() as db:
        receipt = remote.receive_device_entries(db, ctx.audit, serial, body.upload, body.signature, _now())
    return DeviceLogReceiptOut(session=receipt.session, checkpoint_size=receipt.checkpoint_size, stored=receipt.stored)


@router.get(
    "/sessions/{session_id}/recordings/{recording_id}.cast",
    responses=ERRORS,
    summary="Download a sealed asciicast recording (checked against the audit log; the download is logged)",
)
def recording_download(session_id: SessionIdPath, recording_id: RowId, ctx: Ctx, caller: Caller) -> Response:
    with ctx.tx() as db:
        view = remote.view_recording(db, ctx.audit, caller, session_id, recording_id, mode="download")
    return Response(
        view.data,
        media_type="application/x-asciicast",
        headers={
            "Content-Disposition": f'attachment; filename="{view.session_id}-{view.id}.cast"',
            "X-Medsec-Recording-SHA256": view.sha256,
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/sessions/{session_id}/report",
    responses=ERRORS,
    summary="The service report (html, pdf) or its offline-verifiable proof bundle (the download is logged)",
)
def service_report(
    session_id: SessionIdPath,
    ctx: Ctx,
    caller: Caller,
    format: Annotated[str, Query(pattern="^(html|pdf|bundle)$")] = "pdf",
    lang: Annotated[str, Query(pattern="^(ja|en)$")] = "ja",
) -> Response:
    with ctx.tx() as db:
        report = remote.service_report(db, ctx.audit, caller, session_id, fmt=format, lang=lang)
    data, media_type, name = remote.report_file(report, format, lang)
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )
