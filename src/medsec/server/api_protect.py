"""JSON API of device protection: the device's signed event upload and the users' read-only views.

Routes parse, call :mod:`medsec.server.services.protection`, render. The upload is authenticated by
the device signature over the raw body (:mod:`medsec.protect.wire`), never by a token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from medsec.protect.wire import SIGNATURE_HEADER
from medsec.server.api import ERRORS, Caller, Ctx, Str100
from medsec.server.services import protection

router = APIRouter(tags=["protection"])

# Checked against medsec.protect.events.CATEGORIES / ACTIONS by the service (invalid_category, invalid_action).
Choices = Annotated[list[str] | None, Query()]


class ReceiptOut(BaseModel):
    serial: str
    seq: int
    events: int
    received_at: str
    sha256: str


@router.post(
    "/api/v1/devices/{serial}/protection-events",
    response_model=ReceiptOut,
    responses={**ERRORS, 413: ERRORS[413]},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the canonical JSON batch of medsec.protect.wire, signed in X-Medsec-Device-Signature",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def upload_protection_events(serial: Str100, request: Request, ctx: Ctx) -> ReceiptOut:
    body = await request.body()
    signature = request.headers.get(SIGNATURE_HEADER)

    def receive() -> ReceiptOut:
        with ctx.tx() as session:
            receipt = protection.receive_batch(session, ctx.audit, serial, body, signature)
        return ReceiptOut(**receipt.to_json())

    return await run_in_threadpool(receive)


class SubjectOut(BaseModel):
    pid: int | None
    exe: str | None
    sha256: str | None


class ObjectOut(BaseModel):
    path: str | None
    sha256: str | None


class EventOut(BaseModel):
    seq: int
    index: int
    category: str
    action: str
    mode: str | None
    rule: str
    subject: SubjectOut
    object: ObjectOut
    detail: str
    time: datetime
    received_at: datetime


def _event_out(e: Any) -> EventOut:
    return EventOut(
        seq=e.seq,
        index=e.index,
        category=e.category,
        action=e.action,
        mode=e.mode,
        rule=e.rule,
        subject=SubjectOut(pid=e.subject_pid, exe=e.subject_exe, sha256=e.subject_sha256),
        object=ObjectOut(path=e.object_path, sha256=e.object_sha256),
        detail=e.detail,
        time=e.event_time,
        received_at=e.received_at,
    )


@router.get("/api/v1/devices/{serial}/protection-events", response_model=list[EventOut], responses=ERRORS)
def device_protection_events(
    serial: Str100,
    ctx: Ctx,
    caller: Caller,
    category: Choices = None,
    action: Choices = None,
    days: Annotated[int | None, Query(ge=1, le=3660, description="only events of the last N days")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[EventOut]:
    since = datetime.now(UTC) - timedelta(days=days) if days else None
    with ctx.tx() as session:
        rows = protection.list_events(
            session, caller, serial, categories=category or (), actions=action or (), since=since, limit=limit
        )
        return [_event_out(e) for e in rows]


class StatusOut(BaseModel):
    serial: str
    reported: bool
    mode: str | None = Field(description="learn, monitor, enforce, or off when allowlisting is not running")
    off_reason: str | None = Field(description="why allowlisting is off, as the device reported it (mode off only)")
    policy_version: str | None
    trustdb_version: str | None
    last_seq: int | None
    updated_at: datetime | None
    cache_hit_ratio: float | None
    metrics: dict[str, Any] | None


@router.get("/api/v1/devices/{serial}/protection-status", response_model=StatusOut, responses=ERRORS)
def device_protection_status(serial: Str100, ctx: Ctx, caller: Caller) -> StatusOut:
    with ctx.tx() as session:
        view = protection.get_status(session, caller, serial)
    return StatusOut(
        serial=view.serial,
        reported=view.reported,
        mode=view.mode,
        off_reason=view.off_reason,
        policy_version=view.policy_version,
        trustdb_version=view.trustdb_version,
        last_seq=view.last_seq,
        updated_at=view.updated_at,
        cache_hit_ratio=view.cache_hit_ratio,
        metrics=view.metrics,
    )


class FleetRowOut(BaseModel):
    serial: str
    hospital: str
    mode: str | None
    off_reason: str | None
    policy_version: str | None
    blocked: int
    integrity: int
    drift: int
    updated_at: datetime | None


@router.get("/api/v1/protection/fleet", response_model=list[FleetRowOut], responses=ERRORS)
def protection_fleet(
    ctx: Ctx, caller: Caller, days: Annotated[int, Query(ge=1, le=366)] = protection.FLEET_DAYS
) -> list[FleetRowOut]:
    """Per visible device: blocked executions, integrity events and port/USB drift in the last ``days``."""
    with ctx.tx() as session:
        rows = protection.fleet_summary(session, caller, days=days)
    return [
        FleetRowOut(
            serial=r.serial,
            hospital=r.hospital_slug,
            mode=r.mode,
            off_reason=r.off_reason,
            policy_version=r.policy_version,
            blocked=r.blocked,
            integrity=r.integrity,
            drift=r.drift,
            updated_at=r.updated_at,
        )
        for r in rows
    ]
