"""HTTP for signed updates: ``/repo`` (static TUF files), ``/director`` (per device), and ``/api/v1`` routes for
releases, campaigns, maintenance windows, release decisions and notification channels. Routes parse, call a
service, render."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from medsec.errors import InvalidRequest
from medsec.protocol import DEVICE_SIGNATURE_HEADER, DEVICE_TIME_HEADER
from medsec.server.api import ERRORS, Caller, Ctx, Strict
from medsec.server.models import Release
from medsec.server.models_updates import Campaign, CampaignDevice
from medsec.server.services import update_campaigns as campaigns
from medsec.server.services import update_hospital as hospital
from medsec.server.services import updates
from medsec.server.services.update_background import UpdateRuntime

router = APIRouter()

Str100 = Annotated[str, Field(min_length=1, max_length=100)]
Names = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=100)]
# /repo/<product>/metadata/<file> or /repo/<product>/targets/<dir>/.../<file>; no dot-files, no "..".
_REPO_PATH = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}/(metadata/[^/]+|targets(/[^/.][^/]*)+)$")


class RepositoryFiles(StaticFiles):
    """The TUF image repositories as static files: no listings, no hidden or staging folders, no escape."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        clean = path.replace("\\", "/")
        if not _REPO_PATH.match(clean) or any(
            part in ("", ".", "..") or part.startswith(".") for part in clean.split("/")
        ):
            raise StarletteHTTPException(404)
        return await super().get_response(path, scope)


def mount_repository(app: FastAPI, repo_dir: Path) -> None:
    app.mount("/repo", RepositoryFiles(directory=repo_dir, check_dir=False, html=False), name="repo")


def _runtime(request: Request) -> UpdateRuntime:
    runtime: UpdateRuntime = request.app.state.updates
    return runtime


# -- director (device-signed requests) ------------------------------------------------------------


@router.get("/director/{serial}/metadata/{filename}", responses=ERRORS, tags=["updates"])
def director_metadata(serial: Str100, filename: Str100, request: Request, ctx: Ctx) -> Response:
    """Per-device director metadata; only for the device itself (signed request headers)."""
    trust = _runtime(request).trust()
    with ctx.tx() as session:
        data = updates.director_file(
            session,
            ctx.audit,
            trust,
            ctx.settings,
            serial=serial,
            filename=filename,
            path=request.url.path,
            time_header=request.headers.get(DEVICE_TIME_HEADER),
            signature=request.headers.get(DEVICE_SIGNATURE_HEADER),
        )
    return Response(data, media_type="application/json", headers={"Cache-Control": "no-store"})


# -- releases ---------------------------------------------------------------------------------------


class ReleaseOut(BaseModel):
    product: str
    version: str
    release_counter: int | None
    status: str
    hardware_ids: list[str]
    min_from_version: str | None
    target_name: str | None
    target_sha256: str | None
    target_length: int | None
    notes: dict[str, str]
    fixed_vulnerabilities: list[str]
    expected_downtime_minutes: int | None
    rollback_supported: bool
    published_at: datetime | None
    decision: str | None = None
    postponed_until: datetime | None = None


def _release_out(r: Release, decision: Any = None) -> ReleaseOut:
    return ReleaseOut(
        product=r.product,
        version=r.version,
        release_counter=r.release_counter,
        status=r.status,
        hardware_ids=list(r.hardware_ids),
        min_from_version=r.min_from_version,
        target_name=r.target_name,
        target_sha256=r.target_sha256,
        target_length=r.target_length,
        notes={"en": r.notes_en, "ja": r.notes_ja},
        fixed_vulnerabilities=list(r.fixed_vulnerabilities),
        expected_downtime_minutes=r.expected_downtime_minutes,
        rollback_supported=r.rollback_supported,
        published_at=r.published_at,
        decision=decision.decision if decision else None,
        postponed_until=decision.postponed_until if decision else None,
    )


@router.get("/api/v1/releases", response_model=list[ReleaseOut], responses=ERRORS, tags=["updates"])
def list_releases(ctx: Ctx, caller: Caller) -> list[ReleaseOut]:
    with ctx.tx() as session:
        decisions = hospital.decisions_of(session, caller)
        return [_release_out(r, decisions.get(r.id)) for r in hospital.list_releases(session, caller)]


@router.post("/api/v1/releases/sync", response_model=list[ReleaseOut], responses=ERRORS, tags=["updates"])
def sync_releases(ctx: Ctx, caller: Caller) -> list[ReleaseOut]:
    """Mirror the repository's published targets into releases now (the background task also does it)."""
    campaigns.require_release_role(caller)
    with ctx.tx() as session:
        added = updates.sync_releases(session, ctx.audit, ctx.settings.repo_dir, datetime.now().astimezone())
        return [_release_out(r) for r in added]


@router.get("/api/v1/releases/{product}/{version}", response_model=ReleaseOut, responses=ERRORS, tags=["updates"])
def get_release(product: Str100, version: Str100, ctx: Ctx, caller: Caller) -> ReleaseOut:
    with ctx.tx() as session:
        r = hospital.get_visible_release(session, caller, product, version)
        return _release_out(r, hospital.decisions_of(session, caller).get(r.id))


class DecisionIn(Strict):
    hospital: Annotated[str, Field(min_length=2, max_length=64)]
    decision: Literal["accept", "postpone"]
    postponed_until: Annotated[datetime | None, Field(strict=False)] = None  # RFC 3339 text in JSON
    note: Annotated[str, Field(max_length=1000)] = ""


@router.post(
    "/api/v1/releases/{product}/{version}/decision", response_model=ReleaseOut, responses=ERRORS, tags=["updates"]
)
def decide(product: Str100, version: Str100, body: DecisionIn, ctx: Ctx, caller: Caller) -> ReleaseOut:
    """The hospital's responsible person accepts a release for its devices, or postpones it."""
    if body.postponed_until is not None and body.postponed_until.tzinfo is None:
        raise InvalidRequest("invalid_decision", "postponed_until needs a time zone")
    with ctx.tx() as session:
        r = hospital.get_visible_release(session, caller, product, version)
        d = hospital.decide_release(
            session,
            ctx.audit,
            caller,
            hospital=body.hospital,
            release=r,
            decision=body.decision,
            postponed_until=body.postponed_until,
            note=body.note,
        )
        return _release_out(r, d)


# -- campaigns --------------------------------------------------------------------------------------

GroupSpec = int | Annotated[str, Field(max_length=8)]


def _all_in_one_group() -> list[GroupSpec]:
    return ["rest"]


class SelectionIn(Strict):
    hardware_ids: Names = Field(default_factory=list)
    hospitals: Names = Field(default_factory=list)
    sites: Names = Field(default_factory=list)
    from_versions: Names = Field(default_factory=list)


class CampaignIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    product: Str100
    version: Str100
    selection: SelectionIn = Field(default_factory=SelectionIn)
    groups: Annotated[list[GroupSpec], Field(min_length=1, max_length=20)] = Field(default_factory=_all_in_one_group)
    success_threshold: Annotated[int, Field(ge=1, le=100)] = 100
    error_threshold: Annotated[int, Field(ge=0, le=100)] = 10


class HistoryOut(BaseModel):
    at: datetime
    state: str
    reason: str | None
    source: str
    report_counter: int | None


class CampaignDeviceOut(BaseModel):
    serial: str
    hospital: str
    group: int
    state: str
    reason: str | None
    updated_at: datetime
    history: list[HistoryOut]


class CampaignOut(BaseModel):
    id: int
    name: str
    product: str
    version: str
    release_counter: int | None
    status: str
    groups: list[Any]
    current_group: int
    success_threshold: int
    error_threshold: int
    selection: dict[str, Any]
    created_by: int
    approved_by: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stop_reason: str | None
    counts: dict[str, int]
    devices: list[CampaignDeviceOut] | None = None


def campaign_out(session: Any, c: Campaign, *, with_devices: bool) -> CampaignOut:
    rows: list[CampaignDevice] = campaigns.campaign_devices(session, c)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    devices = None
    if with_devices:
        events = campaigns.device_events(session, [r.id for r in rows])
        devices = [
            CampaignDeviceOut(
                serial=r.device.serial,
                hospital=r.device.hospital.slug,
                group=r.group_index,
                state=r.state,
                reason=r.reason,
                updated_at=r.updated_at,
                history=[
                    HistoryOut(
                        at=e.at, state=e.state, reason=e.reason, source=e.source, report_counter=e.report_counter
                    )
                    for e in events[r.id]
                ],
            )
            for r in rows
        ]
    return CampaignOut(
        id=c.id,
        name=c.name,
        product=c.release.product,
        version=c.release.version,
        release_counter=c.release.release_counter,
        status=c.status,
        groups=list(c.groups),
        current_group=c.current_group,
        success_threshold=c.success_threshold,
        error_threshold=c.error_threshold,
        selection=dict(c.selection),
        created_by=c.created_by,
        approved_by=c.approved_by,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        stop_reason=c.stop_reason,
        counts=counts,
        devices=devices,
    )


@router.get("/api/v1/campaigns", response_model=list[CampaignOut], responses=ERRORS, tags=["campaigns"])
def list_campaigns(ctx: Ctx, caller: Caller) -> list[CampaignOut]:
    with ctx.tx() as session:
        return [campaign_out(session, c, with_devices=False) for c in campaigns.list_campaigns(session, caller)]


@router.post("/api/v1/campaigns", response_model=CampaignOut, status_code=201, responses=ERRORS, tags=["campaigns"])
def create_campaign(body: CampaignIn, ctx: Ctx, caller: Caller) -> CampaignOut:
    with ctx.tx() as session:
        c = campaigns.create_campaign(
            session,
            ctx.audit,
            caller,
            name=body.name,
            product=body.product,
            version=body.version,
            selection=campaigns.Selection(
                tuple(body.selection.hardware_ids),
                tuple(body.selection.hospitals),
                tuple(body.selection.sites),
                tuple(body.selection.from_versions),
            ),
            groups=body.groups,
            success_threshold=body.success_threshold,
            error_threshold=body.error_threshold,
        )
        return campaign_out(session, c, with_devices=True)


@router.get("/api/v1/campaigns/{campaign_id}", response_model=CampaignOut, responses=ERRORS, tags=["campaigns"])
def get_campaign(campaign_id: Str100, ctx: Ctx, caller: Caller) -> CampaignOut:
    with ctx.tx() as session:
        return campaign_out(session, campaigns.get_campaign(session, caller, campaign_id), with_devices=True)


ACTIONS = {
    "approve": campaigns.approve_campaign,
    "start": campaigns.start_campaign,
    "pause": campaigns.pause_campaign,
    "resume": campaigns.resume_campaign,
    "cancel": campaigns.cancel_campaign,
}


@router.post(
    "/api/v1/campaigns/{campaign_id}/{action}", response_model=CampaignOut, responses=ERRORS, tags=["campaigns"]
)
def campaign_action(
    campaign_id: Str100, action: Literal["approve", "start", "pause", "resume", "cancel"], ctx: Ctx, caller: Caller
) -> CampaignOut:
    with ctx.tx() as session:
        c = campaigns.get_campaign(session, caller, campaign_id, lock=True)
        ACTIONS[action](session, ctx.audit, caller, c)
        return campaign_out(session, c, with_devices=True)


# -- hospital side --------------------------------------------------------------------------------


class WeeklyRule(Strict):
    days: Annotated[list[Annotated[str, Field(max_length=3)]], Field(min_length=1, max_length=7)]
    start: Annotated[str, Field(max_length=5)]
    duration_minutes: int


class WindowIn(Strict):
    hospital: Annotated[str, Field(min_length=2, max_length=64)]
    site: Annotated[str | None, Field(max_length=200)] = None
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "Asia/Tokyo"
    weekly: Annotated[list[WeeklyRule], Field(max_length=14)]


class WindowOut(BaseModel):
    hospital: str
    site: str | None
    timezone: str
    weekly: list[dict[str, Any]]
    updated_at: datetime


@router.get("/api/v1/maintenance-windows", response_model=list[WindowOut], responses=ERRORS, tags=["updates"])
def list_windows(ctx: Ctx, caller: Caller) -> list[WindowOut]:
    with ctx.tx() as session:
        return [
            WindowOut(hospital=w.hospital, site=w.site, timezone=w.timezone, weekly=w.weekly, updated_at=w.updated_at)
            for w in hospital.list_windows(session, caller)
        ]


@router.put("/api/v1/maintenance-windows", response_model=WindowOut, responses=ERRORS, tags=["updates"])
def put_window(body: WindowIn, ctx: Ctx, caller: Caller) -> WindowOut:
    """Set the weekly install windows of a hospital (or one of its sites); devices get them from the director."""
    with ctx.tx() as session:
        w = hospital.set_window(
            session,
            ctx.audit,
            caller,
            hospital=body.hospital,
            site=body.site,
            timezone=body.timezone,
            weekly=[r.model_dump() for r in body.weekly],
        )
        return WindowOut(
            hospital=body.hospital, site=body.site, timezone=w.timezone, weekly=list(w.weekly), updated_at=w.updated_at
        )


class DeviceUpdateOut(BaseModel):
    serial: str
    hospital: str
    site: str | None
    installed_version: str | None
    campaign: int | None
    release: str | None
    state: str | None
    reason: str | None
    updated_at: datetime | None
    reported_state: str | None
    history: list[HistoryOut]


def _device_update_out(v: hospital.DeviceUpdateView) -> DeviceUpdateOut:
    return DeviceUpdateOut(
        serial=v.serial,
        hospital=v.hospital,
        site=v.site,
        installed_version=v.installed_version,
        campaign=v.campaign,
        release=v.release,
        state=v.state,
        reason=v.reason,
        updated_at=v.updated_at,
        reported_state=v.reported_state,
        history=[HistoryOut(at=a, state=s, reason=r, source=src, report_counter=None) for a, s, r, src in v.history],
    )


@router.get("/api/v1/device-updates", response_model=list[DeviceUpdateOut], responses=ERRORS, tags=["updates"])
def device_updates(ctx: Ctx, caller: Caller) -> list[DeviceUpdateOut]:
    with ctx.tx() as session:
        return [_device_update_out(v) for v in hospital.device_updates(session, caller)]


@router.get("/api/v1/devices/{serial}/updates", response_model=DeviceUpdateOut, responses=ERRORS, tags=["updates"])
def device_update(serial: Str100, ctx: Ctx, caller: Caller) -> DeviceUpdateOut:
    with ctx.tx() as session:
        return _device_update_out(hospital.device_updates(session, caller, serial)[0])


class ChannelIn(Strict):
    kind: Literal["email", "webhook"]
    target: Annotated[str, Field(min_length=3, max_length=500)]


class ChannelOut(BaseModel):
    id: int
    kind: str
    target: str
    secret: str | None = None


@router.get("/api/v1/notification-channels", response_model=list[ChannelOut], responses=ERRORS, tags=["updates"])
def list_channels(ctx: Ctx, caller: Caller) -> list[ChannelOut]:
    with ctx.tx() as session:
        return [ChannelOut(id=c.id, kind=c.kind, target=c.target) for c in hospital.list_channels(session, caller)]


@router.post(
    "/api/v1/notification-channels", response_model=ChannelOut, status_code=201, responses=ERRORS, tags=["updates"]
)
def add_channel(body: ChannelIn, ctx: Ctx, caller: Caller) -> ChannelOut:
    """Add an e-mail or webhook channel for your organisation; a webhook's HMAC secret is shown only here."""
    with ctx.tx() as session:
        c, secret = hospital.add_channel(session, ctx.audit, caller, kind=body.kind, target=body.target)
        return ChannelOut(id=c.id, kind=c.kind, target=c.target, secret=secret)
