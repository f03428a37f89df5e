"""JSON API under ``/api/v1`` plus ``/healthz``. Routes parse, call a service, render."""

from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from sqlalchemy import select, text

from medsec.errors import AuditLogError, AuthenticationFailed, Conflict, NotFound, PermissionDenied, ProtocolError
from medsec.protocol import SignedVersionReport
from medsec.server.context import ServerContext
from medsec.server.models import OrgKind, Role, Site
from medsec.server.principal import Principal
from medsec.server.services import accounts, devices

router = APIRouter()

Str100 = Annotated[str, Field(min_length=1, max_length=100)]
Str256 = Annotated[str, Field(min_length=1, max_length=256)]
# A row id in a path: positive and within a signed 64-bit integer, which both databases store.
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ErrorBody(BaseModel):
    error: str
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    413: {"model": ErrorBody},
    422: {"model": ErrorBody},
}


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(get_ctx)]


def api_principal(request: Request, ctx: Ctx) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationFailed("missing_token", "send 'Authorization: Bearer <API token>'")
    with ctx.tx() as session:
        user, _token = accounts.resolve_api_token(session, secret.strip())
        return Principal.of(user, mfa_verified=True)


Caller = Annotated[Principal, Depends(api_principal)]


# -- health --------------------------------------------------------------------------------------


class Health(BaseModel):
    status: str
    version: str
    database: str


@router.get("/healthz", response_model=Health, tags=["health"])
def healthz(ctx: Ctx) -> Health:
    from medsec import __version__

    with ctx.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return Health(status="ok", version=__version__, database=ctx.engine.dialect.name)


# -- device protocol (authenticated by device signatures, not by tokens) -------------------------


class EnrollmentRequestBody(Strict):
    token: Str256
    serial: Str100
    hardware_id: Str100
    public_key: Annotated[str, Field(min_length=40, max_length=64)]


class SignedEnrollment(Strict):
    request: EnrollmentRequestBody
    signature: Annotated[str, Field(min_length=1, max_length=128)]


class EnrollmentAnswer(BaseModel):
    serial: str
    nonce: str
    server_log_key: str
    witness_key: str
    checkin_interval_seconds: int


@router.post("/api/v1/enroll", response_model=EnrollmentAnswer, responses=ERRORS, tags=["devices"])
def enroll(body: SignedEnrollment, ctx: Ctx) -> EnrollmentAnswer:
    with ctx.tx() as session:
        answer = devices.enroll(
            session,
            ctx.audit,
            body.model_dump(),
            server_log_key=ctx.audit.vkey,
            witness_key=ctx.witness_vkey,
            checkin_interval_seconds=ctx.settings.checkin_interval_seconds,
        )
    return EnrollmentAnswer(**asdict(answer))


# The three models below only document the check-in body in the OpenAPI document (same names and bounds as
# medsec.protocol). Requests are parsed by SignedVersionReport.from_json alone, so nothing is checked twice.


class UpdateReportBody(Strict):
    """The update status inside a signed report; ``state`` is one of ``medsec.protocol.UPDATE_STATES``."""

    state: Annotated[str, Field(min_length=1, max_length=32)]
    release_counter: Annotated[int | None, Field(ge=0, le=2**53 - 1)] = None
    target: Annotated[str | None, Field(max_length=256)] = None
    reason: Annotated[str | None, Field(max_length=1000)] = None
    campaign: Annotated[str | None, Field(max_length=64)] = None


class ReportBody(Strict):
    serial: Str100
    hardware_id: Str100
    installed_version: Str100
    agent_state: Annotated[str, Field(min_length=1, max_length=64)]
    counter: Annotated[int, Field(ge=1, le=2**53 - 1)]
    nonce: Annotated[str, Field(min_length=1, max_length=64)]
    sent_at: Annotated[int, Field(ge=0, le=2**53 - 1)]
    log_checkpoint: Annotated[str | None, Field(max_length=8192)] = None
    log_consistency_proof: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)] = []
    update: UpdateReportBody | None = None


class SignedReport(Strict):
    report: ReportBody
    signature: Annotated[str, Field(min_length=1, max_length=128)]


class CheckinAnswer(BaseModel):
    nonce: str
    checkin_interval_seconds: int
    cosigned_checkpoint: str | None


def _parse_checkin(value: Any) -> SignedVersionReport:
    # A ValueError becomes FastAPI's 422 "invalid_request", as a failed pydantic check does.
    try:
        return SignedVersionReport.from_json(value)
    except ProtocolError as e:
        raise ValueError(str(e)) from e


CheckinBody = Annotated[Any, PlainValidator(_parse_checkin, json_schema_input_type=SignedReport), Body()]


@router.post("/api/v1/checkin", response_model=CheckinAnswer, responses=ERRORS, tags=["devices"])
def checkin(body: CheckinBody, ctx: Ctx) -> CheckinAnswer:
    signed: SignedVersionReport = body  # parsed once, by _parse_checkin
    answer = ctx.checkins.submit(signed)  # group commit; raises the report's own refusal
    return CheckinAnswer(**asdict(answer))


class NonceAnswer(BaseModel):
    nonce: str
    cosigned_checkpoint: str | None = None


@router.post("/api/v1/devices/{serial}/nonce", response_model=NonceAnswer, responses=ERRORS, tags=["devices"])
def device_nonce(serial: Str100, ctx: Ctx) -> NonceAnswer:
    with ctx.tx() as session:
        nonce, cosigned = devices.current_nonce(session, serial)
        return NonceAnswer(nonce=nonce, cosigned_checkpoint=cosigned)


# -- devices (bearer token) ----------------------------------------------------------------------


class DeviceOut(BaseModel):
    serial: str
    model: str
    product: str
    hardware_id: str
    hospital: str
    site: str | None
    status: str
    installed_version: str | None
    agent_state: str | None
    last_seen: datetime | None
    enrolled_at: datetime | None


def _device_out(d: Any) -> DeviceOut:
    return DeviceOut(**devices.device_summary(d))


@router.get("/api/v1/devices", response_model=list[DeviceOut], responses=ERRORS, tags=["devices"])
def list_devices(
    ctx: Ctx, caller: Caller, hospital: Annotated[str | None, Query(max_length=64)] = None
) -> list[DeviceOut]:
    with ctx.tx() as session:
        org = accounts.get_organization(session, caller, hospital) if hospital else None
        return [_device_out(d) for d in devices.list_devices(session, caller, hospital=org)]


@router.get("/api/v1/devices/{serial}", response_model=DeviceOut, responses=ERRORS, tags=["devices"])
def get_device(serial: Str100, ctx: Ctx, caller: Caller) -> DeviceOut:
    with ctx.tx() as session:
        return _device_out(devices.get_device(session, caller, serial))


class CheckinOut(BaseModel):
    counter: int
    received_at: datetime
    installed_version: str
    agent_state: str
    report: str
    signature: str


@router.get("/api/v1/devices/{serial}/checkins", response_model=list[CheckinOut], responses=ERRORS, tags=["devices"])
def device_checkins(
    serial: Str100, ctx: Ctx, caller: Caller, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[CheckinOut]:
    with ctx.tx() as session:
        return [
            CheckinOut(
                counter=c.counter,
                received_at=c.received_at,
                installed_version=c.installed_version,
                agent_state=c.agent_state,
                report=c.report,
                signature=c.signature,
            )
            for c in devices.list_checkins(session, caller, serial, limit)
        ]


class DeviceRegistration(Strict):
    serial: Str100
    hardware_id: Str100
    hospital: Annotated[str, Field(min_length=2, max_length=64)]
    site: Annotated[str | None, Field(max_length=200)] = None


class RegisteredDevice(BaseModel):
    device: DeviceOut
    enrollment_token: str


@router.post("/api/v1/devices", response_model=RegisteredDevice, status_code=201, responses=ERRORS, tags=["devices"])
def register_device(body: DeviceRegistration, ctx: Ctx, caller: Caller) -> RegisteredDevice:
    caller.require_role(Role.MANUFACTURER_ADMIN)
    with ctx.tx() as session:
        hospital = accounts.get_organization(session, caller, body.hospital)
        site = None
        if body.site:
            site = session.scalar(select(Site).where(Site.organization_id == hospital.id, Site.name == body.site))
            if site is None:
                raise NotFound("unknown_site", f"hospital {body.hospital!r} has no site {body.site!r}")
        device, token = devices.register_device(
            session,
            ctx.audit,
            caller,
            serial=body.serial,
            model=devices.get_model(session, body.hardware_id),
            hospital=hospital,
            site=site,
            token_hours=ctx.settings.enrollment_token_hours,
        )
        return RegisteredDevice(device=_device_out(device), enrollment_token=token)


class EnrollmentTokenOut(BaseModel):
    enrollment_token: str


@router.post(
    "/api/v1/devices/{serial}/enrollment-token",
    response_model=EnrollmentTokenOut,
    status_code=201,
    responses=ERRORS,
    tags=["devices"],
)
def new_enrollment_token(serial: Str100, ctx: Ctx, caller: Caller) -> EnrollmentTokenOut:
    caller.require_role(Role.MANUFACTURER_ADMIN)
    with ctx.tx() as session:
        device = devices.get_device(session, caller, serial)
        token = devices.issue_enrollment_token(
            session, ctx.audit, caller, device, hours=ctx.settings.enrollment_token_hours
        )
        return EnrollmentTokenOut(enrollment_token=token)


class ModelIn(Strict):
    product: Str100
    name: Annotated[str, Field(min_length=1, max_length=200)]
    hardware_id: Str100


class ModelOut(BaseModel):
    product: str
    name: str
    hardware_id: str


@router.get("/api/v1/device-models", response_model=list[ModelOut], responses=ERRORS, tags=["devices"])
def list_models(ctx: Ctx, caller: Caller) -> list[ModelOut]:
    with ctx.tx() as session:
        return [
            ModelOut(product=m.product, name=m.name, hardware_id=m.hardware_id) for m in devices.list_models(session)
        ]


@router.post("/api/v1/device-models", response_model=ModelOut, status_code=201, responses=ERRORS, tags=["devices"])
def create_model(body: ModelIn, ctx: Ctx, caller: Caller) -> ModelOut:
    with ctx.tx() as session:
        m = devices.create_model(
            session, ctx.audit, caller, product=body.product, name=body.name, hardware_id=body.hardware_id
        )
        return ModelOut(product=m.product, name=m.name, hardware_id=m.hardware_id)


# -- organisations, users, tokens ----------------------------------------------------------------


class OrganizationOut(BaseModel):
    slug: str
    kind: str
    name: str
    sites: list[str]


class OrganizationIn(Strict):
    slug: Annotated[str, Field(min_length=2, max_length=63)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    sites: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=50)] = []


@router.get("/api/v1/organizations", response_model=list[OrganizationOut], responses=ERRORS, tags=["organizations"])
def list_organizations(ctx: Ctx, caller: Caller) -> list[OrganizationOut]:
    with ctx.tx() as session:
        return [
            OrganizationOut(slug=o.slug, kind=o.kind, name=o.name, sites=[s.name for s in o.sites])
            for o in accounts.list_organizations(session, caller)
        ]


@router.post(
    "/api/v1/hospitals", response_model=OrganizationOut, status_code=201, responses=ERRORS, tags=["organizations"]
)
def create_hospital(body: OrganizationIn, ctx: Ctx, caller: Caller) -> OrganizationOut:
    with ctx.tx() as session:
        org = accounts.create_organization(
            session, ctx.audit, caller, kind=OrgKind.HOSPITAL, slug=body.slug, name=body.name
        )
        for name in body.sites:
            accounts.create_site(session, ctx.audit, caller, org, name)
        return OrganizationOut(slug=org.slug, kind=org.kind, name=org.name, sites=list(body.sites))


class UserOut(BaseModel):
    username: str
    display_name: str
    organization: str
    roles: list[str]
    totp_enrolled: bool
    is_active: bool


class UserIn(Strict):
    username: Annotated[str, Field(min_length=2, max_length=64)]
    display_name: Annotated[str, Field(min_length=1, max_length=200)]
    organization: Annotated[str, Field(min_length=2, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    roles: Annotated[list[Role], Field(max_length=10)]
    email: Annotated[str | None, Field(max_length=254)] = None
    locale: Annotated[str, Field(pattern="^(en|ja)$")] = "en"


class RolesIn(Strict):
    roles: Annotated[list[Role], Field(max_length=10)]


def _user_out(u: Any) -> UserOut:
    return UserOut(
        username=u.username,
        display_name=u.display_name,
        organization=u.organization.slug,
        roles=sorted(r.value for r in u.roles),
        totp_enrolled=u.totp_confirmed,
        is_active=u.is_active,
    )


@router.get("/api/v1/users", response_model=list[UserOut], responses=ERRORS, tags=["users"])
def list_users(ctx: Ctx, caller: Caller) -> list[UserOut]:
    with ctx.tx() as session:
        return [_user_out(u) for u in accounts.list_users(session, caller)]


@router.post("/api/v1/users", response_model=UserOut, status_code=201, responses=ERRORS, tags=["users"])
def create_user(body: UserIn, ctx: Ctx, caller: Caller) -> UserOut:
    with ctx.tx() as session:
        org = accounts.get_organization(session, caller, body.organization)
        user = accounts.create_user(
            session,
            ctx.audit,
            caller,
            org=org,
            username=body.username,
            display_name=body.display_name,
            password=body.password,
            roles=set(body.roles),
            email=body.email,
            locale=body.locale,
        )
        return _user_out(user)


@router.put("/api/v1/users/{username}/roles", response_model=UserOut, responses=ERRORS, tags=["users"])
def put_roles(username: Annotated[str, Field(max_length=64)], body: RolesIn, ctx: Ctx, caller: Caller) -> UserOut:
    with ctx.tx() as session:
        user = accounts.get_user(session, caller, username)
        accounts.set_roles(session, ctx.audit, caller, user, set(body.roles))
        return _user_out(user)


class TokenIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    expires_days: Annotated[int | None, Field(ge=1, le=366)] = 90


class TokenCreated(BaseModel):
    id: int
    name: str
    prefix: str
    token: str
    expires_at: datetime | None


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool


@router.post("/api/v1/tokens", response_model=TokenCreated, status_code=201, responses=ERRORS, tags=["users"])
def create_token(body: TokenIn, ctx: Ctx, caller: Caller) -> TokenCreated:
    with ctx.tx() as session:
        user = accounts.get_user(session, caller, caller.username)
        secret, row = accounts.create_api_token(
            session, ctx.audit, user, name=body.name, expires_days=body.expires_days
        )
        return TokenCreated(id=row.id, name=row.name, prefix=row.prefix, token=secret, expires_at=row.expires_at)


@router.get("/api/v1/tokens", response_model=list[TokenOut], responses=ERRORS, tags=["users"])
def list_tokens(ctx: Ctx, caller: Caller) -> list[TokenOut]:
    with ctx.tx() as session:
        user = accounts.get_user(session, caller, caller.username)
        return [
            TokenOut(
                id=t.id,
                name=t.name,
                prefix=t.prefix,
                created_at=t.created_at,
                expires_at=t.expires_at,
                last_used_at=t.last_used_at,
                revoked=t.revoked_at is not None,
            )
            for t in accounts.list_api_tokens(session, user)
        ]


@router.delete("/api/v1/tokens/{token_id}", status_code=204, responses=ERRORS, tags=["users"])
def revoke_token(token_id: Annotated[int, Field(ge=1, le=2**31)], ctx: Ctx, caller: Caller) -> None:
    with ctx.tx() as session:
        user = accounts.get_user(session, caller, caller.username)
        accounts.revoke_api_token(session, ctx.audit, user, token_id)


# -- audit log -----------------------------------------------------------------------------------


class AuditEntryOut(BaseModel):
    index: int
    type: str
    time: datetime
    actor: str | None
    body: str


class CheckpointOut(BaseModel):
    size: int
    note: str
    log_key: str


class AuditVerifyOut(BaseModel):
    size: int
    root_hash: str
    checkpoints_checked: int
    latest_checkpoint_size: int


def _audit_scope(caller: Principal) -> int | None:
    """None = whole log (manufacturer); else only entries about the caller's hospital."""
    return None if caller.is_manufacturer else caller.organization_id


@router.get("/api/v1/audit/entries", response_model=list[AuditEntryOut], responses=ERRORS, tags=["audit"])
def audit_entries(
    ctx: Ctx,
    caller: Caller,
    start: Annotated[int, Query(ge=0, le=2**53)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryOut]:
    from medsec.server.services.audit_view import list_entries

    with ctx.tx() as session:
        return [
            AuditEntryOut(index=e.idx, type=e.event_type, time=e.created_at, actor=e.actor, body=e.body.decode("utf-8"))
            for e in list_entries(session, _audit_scope(caller), start=start, limit=limit)
        ]


class PublicCheckpointOut(BaseModel):
    size: int
    note: str
    log_key: str
    witness_keys: list[str]
    consistency_proof: list[str] | None = None


@router.get("/api/v1/audit/checkpoint", response_model=PublicCheckpointOut, responses=ERRORS, tags=["audit"])
def audit_checkpoint(
    ctx: Ctx,
    from_size: Annotated[
        int | None, Query(ge=0, le=2**53, description="add a consistency proof from this size")
    ] = None,
) -> PublicCheckpointOut:
    """The latest signed checkpoint (public, like any transparency log's), for witnesses and auditors."""
    with ctx.tx() as session:
        cp = ctx.audit.checkpoint(session)
        proof = None
        if from_size is not None:
            if from_size > cp.size:
                raise Conflict("size_beyond_checkpoint", f"the log has {cp.size} entries, fewer than {from_size}")
            proof = [
                base64.b64encode(h).decode("ascii") for h in ctx.audit.consistency_proof(session, from_size, cp.size)
            ]
        return PublicCheckpointOut(
            size=cp.size,
            note=cp.note,
            log_key=ctx.audit.vkey,
            witness_keys=ctx.settings.witness_keys,
            consistency_proof=proof,
        )


class CosignatureIn(Strict):
    note: Annotated[str, Field(min_length=1, max_length=16384)]


@router.post("/api/v1/audit/cosignatures", response_model=CheckpointOut, responses=ERRORS, tags=["audit"])
def add_cosignature(body: CosignatureIn, ctx: Ctx) -> CheckpointOut:
    """Store a configured witness's cosignature on one of our checkpoints (self-authenticating: it is signed)."""
    try:
        with ctx.tx() as session:
            row = ctx.audit.add_cosignatures(session, body.note, ctx.settings.witness_keys)
            return CheckpointOut(size=row.size, note=row.note, log_key=ctx.audit.vkey)
    except AuditLogError as e:
        raise PermissionDenied("cosignature_refused", e.diagnostics()) from e


@router.get("/api/v1/audit/export", responses=ERRORS, tags=["audit"])
def audit_export(
    ctx: Ctx,
    caller: Caller,
    start: Annotated[int, Query(ge=0, le=2**53)] = 0,
    end: Annotated[int | None, Query(ge=0, le=2**53)] = None,
    witnessed: Annotated[
        bool, Query(description="use the newest checkpoint cosigned by the configured witnesses")
    ] = False,
) -> dict[str, Any]:
    from medsec.server.services.audit_view import export_entries

    with ctx.tx() as session:
        return export_entries(
            session,
            ctx.audit,
            _audit_scope(caller),
            start=start,
            end=end,
            witness_vkeys=ctx.settings.witness_keys if witnessed else (),
        )


@router.post("/api/v1/audit/verify", response_model=AuditVerifyOut, responses=ERRORS, tags=["audit"])
def audit_verify(ctx: Ctx, caller: Caller) -> AuditVerifyOut:
    from medsec.server.services.audit_view import verify_and_record

    try:
        report = verify_and_record(ctx.tx, ctx.audit, caller)
    except AuditLogError as e:
        raise Conflict("audit_log_verification_failed", e.diagnostics()) from e
    return AuditVerifyOut(
        size=report.size,
        root_hash=report.root_hash.hex(),
        checkpoints_checked=report.checkpoints_checked,
        latest_checkpoint_size=report.latest_checkpoint_size,
    )
