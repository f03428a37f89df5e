"""JSON API for signed security status reports (RA-6) and the MDS2-style disclosure (SM-2, SM-4).

Routes parse, call a service, render. Scope: a hospital user asks for and downloads its own hospital's
reports only (another hospital's looks missing); manufacturer users reach every hospital, and only they
export the MDS2 disclosure.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from medsec.crypto.envelope import key_id
from medsec.errors import InvalidRequest, NotFound
from medsec.reports.mds2 import build_mds2, mds2_to_xlsx
from medsec.reports.signing import ensure_report_key
from medsec.server.api import ERRORS, Caller, Ctx, Strict
from medsec.server.context import ServerContext
from medsec.server.principal import Principal
from medsec.server.services import status_reports

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class StatusRequest(Strict):
    hospital: Annotated[str, Field(min_length=1, max_length=64)]
    lang: Annotated[str, Field(pattern="^(en|ja)$")] = "en"


def _signer(ctx: ServerContext) -> status_reports.Signer:
    return status_reports.signer_for(ctx.audit, ctx.settings.keys_dir)


@router.post("/status", status_code=201, responses=ERRORS)
def request_status_report(body: StatusRequest, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    signer = _signer(ctx)
    with ctx.tx() as session:
        row = status_reports.generate(session, signer, caller, body.hospital, body.lang)
        return status_reports.report_summary(row, body.hospital)


@router.get("/status", responses=ERRORS)
def list_status_reports(
    ctx: Ctx, caller: Caller, hospital: Annotated[str | None, Query(max_length=64)] = None
) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        rows = status_reports.list_reports(session, caller, hospital=hospital)
        slugs = status_reports.hospital_slugs(session, rows)
        return [status_reports.report_summary(r, slugs.get(r.organization_id)) for r in rows]


@router.get("/status/{name}", responses=ERRORS)
def status_report(name: str, ctx: Ctx, caller: Caller) -> Response:
    """``<id>`` gives the summary; ``<id>.pdf``, ``.html``, ``.json``, ``.sig`` the files."""
    report_id, _, kind = name.partition(".")
    with ctx.tx() as session:
        row = status_reports.get_report(session, caller, report_id)
        if not kind:
            slugs = status_reports.hospital_slugs(session, [row])
            return JSONResponse(status_reports.report_summary(row, slugs.get(row.organization_id)))
        data, media, filename = status_reports.report_file(row, kind)
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/key", responses=ERRORS)
def report_key(ctx: Ctx, _caller: Caller) -> dict[str, str]:
    """The public half of the report-signing key (base64 of the raw Ed25519 key) and the audit log key."""
    key = ensure_report_key(ctx.settings.keys_dir).verify_key
    return {"key": key.to_base64(), "key_id": key_id(key), "log_key": ctx.audit.vkey}


def _require_manufacturer(caller: Principal) -> None:
    if not caller.is_manufacturer:
        # The disclosure is the manufacturer's own document; to hospitals it does not exist here.
        raise NotFound("unknown_product", "no such product is visible to you")


@router.get("/mds2/{product}", responses=ERRORS)
def mds2(
    product: str,
    ctx: Ctx,
    caller: Caller,
    version: Annotated[str | None, Query(max_length=100)] = None,
    format: Annotated[str, Query(pattern="^(json|xlsx)$")] = "json",
) -> Response:
    _require_manufacturer(caller)
    with ctx.tx() as session:
        doc = build_mds2(session, product, version)
        ctx.audit.append(
            session,
            "report.mds2_exported",
            actor=caller.username,
            organization_id=caller.organization_id,
            details={"product": product, "version": doc["version"], "format": format},
        )
    if format == "json":
        return JSONResponse(doc)
    if format != "xlsx":
        raise InvalidRequest("invalid_format", "format must be json or xlsx")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    filename = f"mds2-{product}-{doc['version'] or 'latest'}-{stamp}.xlsx"
    return Response(
        mds2_to_xlsx(doc), media_type=XLSX_TYPE, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
